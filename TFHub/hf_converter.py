"""Convert the Hugging Face `pytorch-pretrained-biggan` BigGAN-deep generators into BigGANdeep.

The package (PyPI `pytorch-pretrained-biggan`) holds DeepMind's TF-Hub BigGAN-deep 128/256/512
generators as a folder with `pytorch_model.bin` (the state_dict of its `BigGAN` module) and
`config.json` (its `BigGANConfig`). This turns such a folder into a run folder of ours:

    python TFHub/converter.py --hf biggan-deep-128 --truncation 0.4 \
        --weights_root weights --name BigGAN_deep_128_hf --check

writes `weights/BigGAN_deep_128_hf/` with `G.pth` (a state_dict of `BigGANdeep.Generator`,
loads with strict=True), `config.json` (its keyword arguments and the run flags sample.py
reads) and `bn_stats_by_truncation.pth` (the per-truncation BN statistics; see bn_stats.py).
In eval mode `G(z, G.shared(y))` equals the package's `BigGAN(z, one_hot(y), truncation)`.

Conventions mapped (package -> ours):
- Conditioning: the package feeds `cat(z, embed)` to `gen_z` and to every BN's scale/offset
  linear; 2019's deep G feeds `cat(shared(y), z)`. The input columns of those linear layers
  are swapped (the two halves exchanged).
- Class embedding: `embeddings` is a bias-free Linear of the one-hot label, weight
  [z_dim, num_classes]; ours is `shared`, an Embedding [num_classes, z_dim]: the transpose.
- `gen_z`: its output is viewed channels-last, [4, 4, 16 ch]; ours [16 ch, 4, 4]. The output
  rows (weight, bias and SN u vector) are permuted from (h, w, c) to (c, h, w) order.
- Blocks: `layers` lists (upsample, in, out) per block, a SelfAttn inserted before block
  `attention_layer_position`; pairs (no upsample, then upsample) are our stages of
  G_depth 2. GenBlock bn_0..3, conv_0..3 -> GBlock bn1..4, conv1..4; a BN's `scale` ->
  `gain` (both are 1 + linear(cond)), `offset` -> `bias`. SelfAttn snconv1x1_{theta, phi, g,
  o_conv} -> Attention {theta, phi, g, o}, after the stage it follows.
- Output: `bn` (weight, bias) -> `output_layer.0` (gain, bias); `conv_to_rgb` has `ch`
  outputs of which the first 3 are the image; its spectral norm is over all of them, so G
  keeps the whole conv (`G_output_conv_ch` = ch) and slices. All BNs use the config's `eps`
  (1e-4): `BN_eps` and `G_output_BN_eps`.
- Spectral norm: torch's `weight_orig`, `weight_u` [out], `weight_v` [in] -> our `weight`,
  `u0` [1, out]; `v` is recomputed from u by our power iteration, and `sv0` is set to the
  estimate an eval forward divides by. With converged vectors (the published weights' are)
  our eval forward divides by the package's u.W v.
- BN statistics: `running_means`/`running_vars` [n_stats, C] per BN; those for the
  truncation asked for are baked into `stored_mean`/`stored_var`, and the whole table is kept.
- z: the package samples t * N(0, 1) truncated to +-2, so the run's `truncation_style` is
  `scaled`: sample.py --truncation t draws z that way and uses the statistics for t.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Callable, Optional, Union

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import BigGAN  # noqa: E402
import BigGANdeep  # noqa: E402
import bn_stats  # noqa: E402
import flags  # noqa: E402

HF_WEIGHTS, HF_CONFIG = 'pytorch_model.bin', 'config.json'
HF_NAMES = ('biggan-deep-128', 'biggan-deep-256', 'biggan-deep-512')  # the package's models
# The package's BigGANConfig defaults (its 128 model): a config.json may leave any out.
HF_DEFAULTS = dict(output_dim=128, z_dim=128, class_embed_dim=128, channel_width=128,
                   num_classes=1000, attention_layer_position=8, eps=1e-4, n_stats=51,
                   layers=[[False, 16, 16], [True, 16, 16], [False, 16, 16], [True, 16, 8],
                           [False, 8, 8], [True, 8, 4], [False, 4, 4], [True, 4, 2],
                           [False, 2, 2], [True, 2, 1]])


class HFConversionError(ValueError):
    """The folder cannot be converted (the message names what was expected)."""


# ----------------------------------------------------------------------------------------
# Reading the folder and its config
# ----------------------------------------------------------------------------------------


def read_folder(path: Union[str, Path]) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json as a dict, the state_dict of pytorch_model.bin) of a package folder, or
    of a published name (HF_NAMES: see package_files) when no such folder exists."""
    path = Path(path)
    if str(path) in HF_NAMES and not path.is_dir():
        return read_files(*package_files(str(path)))
    if not path.is_dir():
        raise HFConversionError(f'--hf {path}: no such folder; give the folder holding the '
                                f'package\'s {HF_WEIGHTS} and {HF_CONFIG}, or a published '
                                f'name: {", ".join(HF_NAMES)}')
    missing = [f for f in (HF_WEIGHTS, HF_CONFIG) if not (path / f).is_file()]
    if missing:
        has = ', '.join(sorted(p.name for p in path.iterdir())[:10]) or 'nothing'
        raise HFConversionError(
            f'--hf {path}: missing {" and ".join(missing)}. A pytorch-pretrained-biggan model '
            f'folder holds {HF_WEIGHTS} and {HF_CONFIG} (its cache names them <hash>.<...>: '
            f'copy or link them under these names); the folder holds: {has}')
    return read_files(path / HF_WEIGHTS, path / HF_CONFIG)


def read_files(weights: Path, config_file: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the config as a dict, the state_dict) of the package's two files of one model."""
    try:
        with open(config_file) as f:
            config = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise HFConversionError(f'{config_file} is not readable JSON: {err}') from None
    if not isinstance(config, dict):
        raise HFConversionError(f'{config_file}: expected a JSON object of BigGANConfig '
                                f'fields, got {type(config).__name__}')
    try:
        state = torch.load(weights, map_location='cpu', weights_only=True)
    except Exception as err:  # a truncated or foreign file: say which and why
        raise HFConversionError(f'{weights} is not a readable torch state_dict: '
                                f'{type(err).__name__}: {err}') from None
    if not isinstance(state, dict):
        raise HFConversionError(f'{weights}: expected a state_dict, got '
                                f'{type(state).__name__}')
    return {**HF_DEFAULTS, **config}, state


# ----------------------------------------------------------------------------------------
# Published names: the package's own download cache
# ----------------------------------------------------------------------------------------


def package_files(name: str, cache_dir: Optional[str] = None) -> tuple[Path, Path]:
    """(weights, config) files of a published model (`biggan-deep-128`, ...) in the
    pytorch-pretrained-biggan cache, downloaded through the package when not there yet."""
    try:
        from pytorch_pretrained_biggan import file_utils, model
    except ImportError as err:
        raise HFConversionError(f'{name}: fetching the published weights by name needs the '
                                f'pytorch-pretrained-biggan package ({err}): pip install '
                                f'pytorch-pretrained-biggan, or give a folder holding '
                                f'{HF_WEIGHTS} and {HF_CONFIG}') from None
    cache = Path(cache_dir or file_utils.PYTORCH_PRETRAINED_BIGGAN_CACHE).expanduser()
    urls = (model.PRETRAINED_MODEL_ARCHIVE_MAP[name], model.PRETRAINED_CONFIG_ARCHIVE_MAP[name])
    found = []
    for url, local_name in zip(urls, (HF_WEIGHTS, HF_CONFIG)):
        path = cached_file(url, cache)
        if path is None:
            try:
                path = Path(file_utils.cached_path(url, cache_dir=str(cache)))
            except Exception as err:  # offline: requests' ConnectionError, an IOError, ...
                raise HFConversionError(
                    f'{name}: {local_name} is not in the pytorch-pretrained-biggan cache '
                    f'({cache}) and downloading {url} failed ({type(err).__name__}). '
                    f'On a machine that is online download the model\'s two files, '
                    f'{urls[0]} as {HF_WEIGHTS} and {urls[1]} as {HF_CONFIG}, into one folder '
                    f'and give that folder instead of the name') from None
        found.append(path)
    return found[0], found[1]


def cached_file(url: str, cache: Path) -> Optional[Path]:
    """The package's complete cached copy of `url`, if any, found without the network (its
    own lookup asks the server for the file's ETag first, so it fails offline)."""
    if not cache.is_dir():
        return None
    prefix = hashlib.sha256(url.encode('utf-8')).hexdigest()  # the package's url_to_filename
    done = [p for p in cache.glob(prefix + '*') if not p.name.endswith('.json')
            and p.with_name(p.name + '.json').is_file()]  # the meta file is written last
    return max(done, key=lambda p: p.stat().st_mtime) if done else None


def stages_of(hf: dict) -> tuple[list[int], list[int]]:
    """(in, out) channel multiples per stage from the package's `layers`, or an error."""
    blocks = hf['layers']
    try:
        blocks = [(bool(up), int(cin), int(cout)) for up, cin, cout in blocks]
    except (TypeError, ValueError):
        raise HFConversionError(f"config.json layers {hf['layers']!r}: expected a list of "
                                f"[upsample, in, out] triples") from None
    pairs = [blocks[i:i + 2] for i in range(0, len(blocks), 2)]
    ok = len(blocks) % 2 == 0 and all(
        a == (False, a[1], a[1]) and b[0] and b[1] == a[1] for a, b in pairs)
    if not ok:
        raise HFConversionError(
            f'config.json layers {hf["layers"]}: expected pairs [false, c, c], [true, c, c_out] '
            f'(a block keeping its channels, then one upsampling), as in the package\'s '
            f'128/256/512 models; BigGANdeep has two blocks per stage')
    return [a[1] for a, _ in pairs], [b[2] for _, b in pairs]


def run_config(hf: dict) -> dict:
    """Our run config (BigGANdeep.Generator kwargs and the flags sample.py reads) of the
    package's config, or an error naming what does not fit."""
    for key in ('output_dim', 'z_dim', 'channel_width', 'num_classes', 'n_stats',
                'attention_layer_position'):
        if not isinstance(hf[key], int) or isinstance(hf[key], bool) or hf[key] < 0:
            raise HFConversionError(f'config.json {key} {hf[key]!r}: expected a '
                                    f'non-negative integer')
    if not (isinstance(hf['eps'], (int, float)) and hf['eps'] > 0):
        raise HFConversionError(f"config.json eps {hf['eps']!r}: expected a positive number")
    if hf['n_stats'] < 2:
        raise HFConversionError(f"config.json n_stats {hf['n_stats']}: need at least 2 "
                                f"truncations of BN statistics")
    resolution, ins, outs = hf['output_dim'], *stages_of(hf)
    table = BigGAN.G_CHANNELS.get(resolution)
    if table is None or (ins, outs) != (table[0], table[1]):
        known = '; '.join(f'{r}: {i} -> {o}' for r, (i, o) in BigGAN.G_CHANNELS.items())
        raise HFConversionError(
            f'config.json output_dim {resolution} with stage channels {ins} -> {outs} (x '
            f'channel_width): BigGANdeep has no such generator; its tables are {known}')
    p, n_blocks = hf['attention_layer_position'], 2 * len(ins)
    if p < n_blocks and (p == 0 or p % 2):
        raise HFConversionError(
            f'config.json attention_layer_position {p}: BigGANdeep puts attention after a '
            f'stage, i.e. before an even block index from 2 to {n_blocks - 2} (or none: '
            f'{n_blocks} or more)')
    ch, eps = hf['channel_width'], float(hf['eps'])
    return dict(model='BigGANdeep', resolution=resolution, n_classes=hf['num_classes'],
                G_ch=ch, G_depth=2, dim_z=hf['z_dim'], shared_dim=hf['z_dim'], hier=True,
                G_shared=True, G_attn=str(4 * 2 ** (p // 2)) if p < n_blocks else '0',
                G_nl='relu', G_param='SN', norm_style='bn', BN_eps=eps, SN_eps=eps,
                G_output_BN_eps=eps, G_output_conv_ch=ch, num_G_SVs=1, num_G_SV_itrs=1,
                skip_init=True, G_eval_mode=True, truncation_style='scaled')


# ----------------------------------------------------------------------------------------
# The map: one entry per tensor of our G
# ----------------------------------------------------------------------------------------


def swap_halves(w: torch.Tensor) -> torch.Tensor:
    """Columns [z | embed] -> [embed | z]: the package's cat(z, embed) as our cat(y, z)."""
    half = w.size(1) // 2
    return torch.cat([w[:, half:], w[:, :half]], 1)


def channels_first(x: torch.Tensor, channels: int) -> torch.Tensor:
    """gen_z output units from (h, w, c) to (c, h, w) order (dim 0; 4x4 positions)."""
    rest = x.shape[1:]
    return x.reshape(4, 4, channels, *rest).permute(2, 0, 1, *range(3, 3 + len(rest))
                                                    ).reshape(-1, *rest)


def module_pairs(G: BigGANdeep.Generator, hf: dict) -> list[tuple[str, str]]:
    """(our module name, the package's) for every block, attention and BN."""
    p, n_blocks = hf['attention_layer_position'], 2 * len(G.arch['in_channels'])
    pairs = []
    for k in range(n_blocks):
        j = k + (1 if p < n_blocks and k >= p else 0)  # the SelfAttn takes index p
        pairs += [(f'blocks.{k}.0.conv{i + 1}', f'generator.layers.{j}.conv_{i}')
                  for i in range(4)]
        pairs += [(f'blocks.{k}.0.bn{i + 1}', f'generator.layers.{j}.bn_{i}') for i in range(4)]
    if p < n_blocks:
        pairs += [(f'blocks.{p - 1}.1.{ours}', f'generator.layers.{p}.snconv1x1_{theirs}')
                  for ours, theirs in (('theta', 'theta'), ('phi', 'phi'), ('g', 'g'),
                                       ('o', 'o_conv'))]
    return pairs


class _TensorMap:
    """The package's tensors taken into our state_dict, noting every key used and wrong."""

    def __init__(self, state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                 n_stats: int, truncation: float, interpolation: str):
        self.state, self.own, self.n = state, own, n_stats
        self.truncation, self.interpolation = truncation, interpolation
        self.out: dict[str, torch.Tensor] = {}
        self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.used: set[str] = set()
        self.wrong: list[str] = []

    def take(self, key: str, shape: tuple) -> Optional[torch.Tensor]:
        """The package's tensor `key` as float, or None if it is missing or not of `shape`."""
        self.used.add(key)
        if key not in self.state:
            return None
        if tuple(self.state[key].shape) != tuple(shape):
            self.wrong.append(f'{key}: {tuple(self.state[key].shape)}, expected {tuple(shape)}')
            return None
        return self.state[key].detach().float()

    def put(self, ours: str, theirs: str, f: Callable = lambda x: x, shape: tuple = None
            ) -> None:
        """Our tensor `ours` from theirs (of `shape`, default ours), transformed by f."""
        x = self.take(theirs, self.own[ours].shape if shape is None else shape)
        if x is not None:
            self.out[ours] = f(x).reshape(self.own[ours].shape)

    def sn(self, ours: str, theirs: str, w_f: Callable = lambda x: x,
           u_f: Callable = lambda x: x) -> None:
        """An SN layer: weight by w_f; u vector and bias (output units) by u_f."""
        W = self.own[f'{ours}.weight']
        self.put(f'{ours}.weight', f'{theirs}.weight_orig', w_f)
        self.put(f'{ours}.u0', f'{theirs}.weight_u', u_f, shape=(W.size(0),))
        self.take(f'{theirs}.weight_v', (W[0].numel(),))
        self.out[f'{ours}.sv0'] = self.own[f'{ours}.sv0']  # set from the converted weights
        if f'{ours}.bias' in self.own:
            self.put(f'{ours}.bias', f'{theirs}.bias', u_f)

    def bn(self, ours: str, theirs: str) -> None:
        """A BN's statistics table, and its stored statistics at the truncation asked for."""
        C = self.own[f'{ours}.stored_mean'].numel()
        means = self.take(f'{theirs}.running_means', (self.n, C))
        var = self.take(f'{theirs}.running_vars', (self.n, C))
        if means is not None and var is not None:
            self.stats[ours] = (means, var)
            for stat, table in (('stored_mean', means), ('stored_var', var)):
                self.out[f'{ours}.{stat}'] = bn_stats.stats_at(table, self.truncation,
                                                                self.interpolation)


def _map_tensors(m: _TensorMap, G: BigGANdeep.Generator, hf: dict, ch: int) -> None:
    """Every tensor of our G from the package's, as the module docstring lists them."""
    m.put('shared.weight', 'embeddings.weight', lambda w: w.t(),
          shape=tuple(m.own['shared.weight'].shape[::-1]))
    m.sn('linear', 'generator.gen_z', lambda w: swap_halves(channels_first(w, ch)),
         lambda u: channels_first(u, ch))
    for ours, theirs in module_pairs(G, hf):
        if '.bn' in ours:
            m.bn(ours, theirs)
            m.sn(f'{ours}.gain', f'{theirs}.scale', swap_halves)
            m.sn(f'{ours}.bias', f'{theirs}.offset', swap_halves)
        else:
            m.sn(ours, theirs)
    p = hf['attention_layer_position']
    if p < 2 * len(G.arch['in_channels']):
        m.put(f'blocks.{p - 1}.1.gamma', f'generator.layers.{p}.gamma', shape=(1,))
    m.bn('output_layer.0', 'generator.bn')
    m.put('output_layer.0.gain', 'generator.bn.weight')
    m.put('output_layer.0.bias', 'generator.bn.bias')
    m.sn('output_layer.2', 'generator.conv_to_rgb')


def convert(state: dict[str, torch.Tensor], hf: dict, truncation: float,
            interpolation: str = 'package'
            ) -> tuple[BigGANdeep.Generator, dict, dict]:
    """(G with the converted weights and the statistics for `truncation`, our config, the
    per-truncation BN statistics table); every missing, unexpected or wrong-shaped tensor is
    reported at once."""
    config = run_config(hf)
    G = BigGANdeep.Generator(**config)
    ch = config['G_ch'] * BigGAN.G_CHANNELS[config['resolution']][0][0]
    m = _TensorMap(state, G.state_dict(), hf['n_stats'], truncation, interpolation)
    _map_tensors(m, G, hf, ch)
    missing = sorted(k for k in m.used if k not in state)
    unexpected = sorted(set(state) - m.used)
    if missing or m.wrong or unexpected:
        raise HFConversionError(report(config, missing, m.wrong, unexpected))
    left = sorted(set(m.own) - set(m.out))
    assert not left, f'map leaves {left} unset'  # a bug here, not in the user's file
    G.load_state_dict(m.out, strict=True)
    set_singular_values(G)
    G.eval()
    return G, config, bn_stats.make_table(m.stats, interpolation, G, 'pytorch-pretrained-biggan')


def set_singular_values(G: torch.nn.Module) -> None:
    """Each SN layer's `sv0`: the estimate its eval forward divides by."""
    import layers
    with torch.no_grad():
        for m in G.modules():
            if isinstance(m, layers.SN):
                W = m.weight.float().view(m.weight.size(0), -1)
                us, vs = layers.power_iteration(W, m.u, m.sn_eps)
                for sv, u, v in zip(m.sv, us, vs):
                    sv.copy_(torch.mm(torch.mm(v, W.t()), u.t()).view(1))


def report(config: dict, missing: list, wrong: list, unexpected: list) -> str:
    """Every mismatch between the package's state_dict and what its config.json implies."""
    lines = [f'{HF_WEIGHTS} does not fit its {HF_CONFIG} (read as BigGAN-deep '
             f'{config["resolution"]}, channel_width {config["G_ch"]}, z_dim {config["dim_z"]},'
             f' {config["n_classes"]} classes):']
    for title, keys in (('missing', missing), ('wrong shape', wrong),
                        ('unexpected', unexpected)):
        if keys:
            lines.append(f'  {title} ({len(keys)}): ' + ', '.join(keys[:8])
                         + (f', ... ({len(keys) - 8} more)' if len(keys) > 8 else ''))
    lines.append('Check that both files come from the same model folder.')
    return '\n'.join(lines)


# ----------------------------------------------------------------------------------------
# Command line (called by TFHub/converter.py --hf) and the check against the package
# ----------------------------------------------------------------------------------------


def package_difference(hf_dir: Union[str, Path], G: torch.nn.Module, truncation: float,
                       num: int = 4, seed: int = 0) -> Optional[float]:
    """Max |ours - package| on `num` samples at `truncation`, or None without the package."""
    try:
        from pytorch_pretrained_biggan import BigGAN as HFBigGAN
    except ImportError:
        return None
    ref = HFBigGAN.from_pretrained(str(hf_dir)).eval()
    gen = torch.Generator().manual_seed(seed)
    z = truncation * torch.nn.init.trunc_normal_(torch.empty(num, G.dim_z), a=-2, b=2,
                                                 generator=gen)
    y = torch.randint(0, G.n_classes, (num,), generator=gen)
    with torch.no_grad():
        theirs = ref(z, torch.nn.functional.one_hot(y, G.n_classes).float(), truncation)
        ours = G.eval().cpu()(z, G.shared(y))
    return float((ours - theirs).abs().max())


def write_run(G: torch.nn.Module, config: dict, table: dict, weights_root: Path, name: str,
              save_run: Callable) -> Path:
    """Write the converted run folder (G.pth, config.json, the BN table); returns it."""
    run_dir = weights_root / name
    run_dir.mkdir(parents=True, exist_ok=True)
    bn_stats.save_table(table, str(run_dir))
    save_run(G.state_dict(), config, weights_root, name)
    return run_dir


def finetune_flags(config: dict) -> str:
    """The train.py flags that build this G (for --load_weights)."""
    return flags.flag_line({k: config[k] for k in flags.G_BUILD_KEYS})


def main(args, save_run: Callable, write_check: Callable) -> int:
    """--hf: convert the folder, write the run (and the table), optionally check."""
    try:
        hf, state = read_folder(args.hf)
        if args.resolution and args.resolution != hf['output_dim']:
            raise HFConversionError(f'--resolution {args.resolution}, but {args.hf}/'
                                    f'{HF_CONFIG} has output_dim {hf["output_dim"]}: drop '
                                    f'--resolution (--hf reads it from the config)')
        if not 0 < args.truncation <= 1:  # the package's range (t = 0 would be one image)
            raise HFConversionError(f'--truncation {args.truncation}: give 0 < t <= 1, the '
                                    f'range of the package and its BN statistics')
        G, config, table = convert(state, hf, args.truncation, args.bn_interpolation)
    except (HFConversionError, ValueError) as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    name = args.name or f'BigGAN_deep_{config["resolution"]}_hf'
    run_dir = write_run(G, config, table, Path(args.weights_root), name, save_run)
    print(f'wrote {run_dir / "G.pth"} (BN statistics for truncation {args.truncation}), '
          f'{run_dir / "config.json"} and {run_dir / bn_stats.TABLE_FILE}')
    print(f'sample: python sample.py --weights_root {args.weights_root} --experiment_name '
          f'{name} --truncation {args.truncation} --sample_sheets\n'
          f'fine-tune: python train.py {finetune_flags(config)} --load_weights {run_dir} ...')
    if args.check:
        checked = write_check(run_dir, 'hf_check.png', args)
        if checked is None:
            return 1
        (G, x), grid = checked, run_dir / 'hf_check.png'
        diff = package_difference(args.hf, G, args.truncation)
        vs = ('pytorch_pretrained_biggan not installed: not compared' if diff is None
              else f'max |ours - package| {diff:.2e} at truncation {args.truncation}')
        print(f'check: {len(x)} samples in {grid}; {vs}')
        if diff is not None and not diff <= 2e-4:  # a NaN difference fails too
            print('error: the converted G differs from the package', file=sys.stderr)
            return 1
    return 0
