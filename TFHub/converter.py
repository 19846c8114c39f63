"""Convert the TF-Hub BigGAN generators (biggan-128/256/512, v2) into a G.pth for BigGAN.py.

Reads the TF-Hub module itself (needs tensorflow and tensorflow_hub) or a dump of its
variables (.npz or .h5 keyed by the full TF names, e.g.
`module/Generator/GBlock/conv0/w/ema_b999900:0`), maps names and layouts onto
`BigGAN.Generator` and writes `<weights_root>/<name>/G.pth` (a plain state_dict that loads
with strict=True) and `config.json` (the Generator's keyword arguments) beside it.

    python TFHub/converter.py --resolution 128 --dump biggan128.npz \
        --weights_root weights --name BigGAN_TFHub_128 --check
    # where TensorFlow is installed: read the module, keep a dump for machines without TF
    python TFHub/converter.py --resolution 256 --module_path /path/to/biggan-256_2 \
        --save_dump biggan256.h5 --weights_root weights --name BigGAN_TFHub_256

The map of TF names and layouts onto ours, and the assumptions it makes where TensorFlow was
not at hand to check, are in tfhub_map.py. EMA: every `w`, `b`, `gamma`, `beta` has an
`/ema_b999900` twin, used by default (`--no_ema` takes the raw ones). The converter and
`dump_tf_variables` (our G -> TF names) are exact inverses. `--hf` converts the Hugging Face
BigGAN-deep generators instead: see hf_converter.py.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union

import h5py
import numpy as np
import torch
import torch.nn as nn

# TFHub/ is a folder, not a package: import the models from the repository root.
ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / 'TFHub'):  # the models; hf_converter.py, tfhub_map.py beside this
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import BigGAN  # noqa: E402
import hf_converter  # noqa: E402  (TFHub/ is on sys.path)
from flags import run_cli  # noqa: E402
from tfhub_map import EMA_SUFFIX, Entry, Layouts, tf_name, variable_map  # noqa: E402  (TFHub/)

# Public names, with tfhub_map.py's (the name and layout map) kept importable from here.
__all__ = ['EMA_SUFFIX', 'TFHUB_DIM_Z', 'TFHUB_ATTN', 'ConversionError', 'tfhub_config',
           'Entry', 'variable_map', 'tf_name', 'Layouts', 'convert', 'tf_variables',
           'read_tfhub_module', 'load_variables', 'save_variables', 'dump_tf_variables',
           'save_run', 'load_run', 'sample_check', 'parse_args', 'main', 'write_check']

TFHUB_DIM_Z = {128: 120, 256: 140, 512: 128}
TFHUB_ATTN = {128: '64', 256: '128', 512: '64'}


class ConversionError(ValueError):
    """The TF variables cannot be turned into this G (the message names what and why)."""


def tfhub_config(resolution: int) -> dict:
    """The `BigGAN.Generator` keyword arguments of the TF-Hub module at this resolution."""
    if resolution not in TFHUB_DIM_Z:
        raise ConversionError(f'TF-Hub has BigGAN generators at {sorted(TFHUB_DIM_Z)}, '
                              f'not {resolution}')
    return dict(model='BigGAN', resolution=resolution, n_classes=1000, G_ch=96,
                dim_z=TFHUB_DIM_Z[resolution], shared_dim=128, hier=True, G_shared=True,
                G_attn=TFHUB_ATTN[resolution], G_nl='relu', G_param='SN', norm_style='bn',
                BN_eps=1e-4, SN_eps=1e-4, num_G_SVs=1, num_G_SV_itrs=1, skip_init=True,
                truncation_style='scaled')


# ----------------------------------------------------------------------------------------
# TF variables -> our G, and back
# ----------------------------------------------------------------------------------------


def _canonical(name: str) -> str:
    """TF names as `var.name` writes them: no leading '/', with the `:0` output index."""
    name = name.lstrip('/')
    return name if ':' in name else name + ':0'


def _shape_ok(shape: tuple, expected: tuple) -> bool:
    # Counters may be stored as scalars or [1] arrays.
    return shape == expected or (expected == () and int(np.prod(shape)) == 1)


def _report(config: dict, ema: bool, missing: dict, wrong: list, unexpected: list,
            variables: Mapping) -> str:
    """A readable list of every mismatch, with shapes and a hint where one applies."""
    arch = ', '.join(f'{k}={config[k]}' for k in ('resolution', 'G_ch', 'dim_z', 'G_attn'))
    lines = [f'the TF variables do not match BigGAN.Generator({arch}):']
    if missing:
        lines.append(f'  missing ({len(missing)}):')
        lines += [f'    {n}  expected shape {s}' for n, s in missing.items()]
    if wrong:
        lines.append(f'  wrong shape ({len(wrong)}):')
        lines += [f'    {n}  has {s}, expected {e}' for n, s, e in wrong]
    if unexpected:
        lines.append(f'  unexpected ({len(unexpected)}):')
        lines += [f'    {n}  shape {tuple(np.shape(variables[n]))}' for n in unexpected]
    raw_twins = [n.replace(f'/{EMA_SUFFIX}:0', ':0') for n in missing if EMA_SUFFIX in n]
    if ema and raw_twins and all(n in variables for n in raw_twins):
        lines.append('  hint: the EMA twins are missing, the raw weights are there: use --no_ema')
    if wrong:
        lines.append('  hint: check --resolution (128, 256 and 512 differ in dim_z, attention)')
    return '\n'.join(lines)


def convert(variables: Mapping[str, np.ndarray], config: dict, ema: bool = True,
            ignore_unexpected: bool = False) -> dict[str, torch.Tensor]:
    """Our G's state_dict from TF-named variables; raises ConversionError naming mismatches.

    `ema` takes the `/ema_b999900` weights, else the raw ones. Unexpected variables are an
    error unless `ignore_unexpected` (then a warning lists them).
    """
    variables = {_canonical(k): v for k, v in variables.items()}
    G = BigGAN.Generator(**{**config, 'skip_init': True})
    state = G.state_dict()
    layout = Layouts(G)
    entries = variable_map(G)
    missing, wrong, known, converted = {}, [], set(), {}
    for e in entries:
        names = [tf_name(n, ema and e.ema) for n in e.tf]
        known.update(tf_name(n, twin) for n in e.tf for twin in {False, e.ema})
        expected = layout.to_tf(e.kind, state[e.key].numpy())
        arrays = []
        for name, exp in zip(names, expected):
            if name not in variables:
                missing[name] = exp.shape
                continue
            arr = np.asarray(variables[name])
            if not _shape_ok(arr.shape, exp.shape):
                wrong.append((name, arr.shape, exp.shape))
            arrays.append(arr)
        if len(arrays) == len(names) and not wrong:
            converted[e.key] = torch.from_numpy(layout.to_ours(e.kind, arrays))
    wrong = list({w[0]: w for w in wrong}.values())  # a shared counter is listed once
    unexpected = sorted(set(variables) - known)
    if missing or wrong or (unexpected and not ignore_unexpected):
        raise ConversionError(_report(config, ema, missing, wrong, unexpected, variables))
    if unexpected:
        warnings.warn(f'ignored {len(unexpected)} unexpected TF variables: '
                      + ', '.join(unexpected), stacklevel=2)
    # Only the log-only singular values have no TF source: keep G's, then recompute them.
    G.load_state_dict({**state, **converted}, strict=True)
    hf_converter.set_singular_values(G)
    return {k: v.detach().clone() for k, v in G.state_dict().items()}


def tf_variables(G: BigGAN.Generator, raw: Optional[BigGAN.Generator] = None
                 ) -> dict[str, np.ndarray]:
    """Our G as TF-named variables: the inverse of `convert`.

    G's weights go under the EMA names and `raw`'s (default G) under the raw names; u0 and
    the BN statistics, which TF keeps once, come from G (as sums with a counter of 1).
    """
    state, raw_state = ({k: v.detach().cpu().float().numpy() for k, v in net.state_dict().items()}
                        for net in (G, G if raw is None else raw))
    bad = [k for k in state if k not in raw_state or raw_state[k].shape != state[k].shape]
    if bad:
        raise ConversionError(f'raw G does not match G at {bad}')
    layout, out = Layouts(G), {}
    for e in variable_map(G):
        # An EMA'd variable is written twice: G under the EMA name, raw under the plain one.
        for source, ema in [(state, e.ema)] + ([(raw_state, False)] if e.ema else []):
            out.update((tf_name(n, ema), a)
                       for n, a in zip(e.tf, layout.to_tf(e.kind, source[e.key])))
    return out


# ----------------------------------------------------------------------------------------
# Reading and writing variables
# ----------------------------------------------------------------------------------------


def read_tfhub_module(module_path: str) -> dict[str, np.ndarray]:
    """Every variable of a TF-Hub module (a local folder or URL), keyed by its TF name."""
    try:
        import tensorflow.compat.v1 as tf
        import tensorflow_hub as hub
    except ImportError as err:
        raise ConversionError(
            'reading a TF-Hub module needs tensorflow and tensorflow_hub; without them, dump '
            'the variables where TF is installed (--module_path ... --save_dump x.h5) and '
            'pass --dump x.h5 here') from err
    with tf.Graph().as_default():
        hub.Module(module_path)  # creates the variables under `module/`
        with tf.Session() as sess:
            # hub.Module's initialisers restore the module's trained values.
            sess.run(tf.global_variables_initializer())
            tf_vars = tf.global_variables()
            return dict(zip((v.name for v in tf_vars), sess.run(tf_vars)))


def load_variables(path: Union[str, Path]) -> dict[str, np.ndarray]:
    """TF-named variables from an .npz or .h5/.hdf5 dump (names with or without `:0`)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ('.npz', '.h5', '.hdf5'):
        raise ConversionError(f'{path}: a dump must be .npz, .h5 or .hdf5')
    if not path.is_file():
        raise ConversionError(f'{path}: no such file')
    out = {}
    try:
        if suffix == '.npz':
            with np.load(path) as f:
                out = {k: f[k] for k in f.files}
        else:
            with h5py.File(path, 'r') as f:
                # TF's '/'-separated names become nested HDF5 groups; collect the leaves.
                f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                             if isinstance(obj, h5py.Dataset) else None)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise ConversionError(f'{path}: cannot read it as {suffix}: {err}') from err
    return {_canonical(k): v for k, v in out.items()}


def save_variables(variables: Mapping[str, np.ndarray], path: Union[str, Path]) -> None:
    """Write TF-named variables to an .npz or .h5/.hdf5 file."""
    path = Path(path)
    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == '.npz':
        np.savez(path, **variables)
    elif suffix in ('.h5', '.hdf5'):
        with h5py.File(path, 'w') as f:
            for name, value in variables.items():
                f.create_dataset(name, data=np.asarray(value))
    else:
        raise ConversionError(f'{path}: a dump must be .npz, .h5 or .hdf5')


def dump_tf_variables(G: BigGAN.Generator, path: Union[str, Path],
                      raw: Optional[BigGAN.Generator] = None) -> None:
    """Write our G as a TF-Hub-style variable dump (.npz or .h5); see `tf_variables`."""
    save_variables(tf_variables(G, raw), path)


# ----------------------------------------------------------------------------------------
# Run folder and check
# ----------------------------------------------------------------------------------------


def save_run(state: Mapping[str, torch.Tensor], config: dict, weights_root: Union[str, Path],
             name: str) -> Path:
    """Write `<weights_root>/<name>/G.pth` and `config.json`; returns the run folder."""
    run_dir = Path(weights_root) / name
    run_dir.mkdir(parents=True, exist_ok=True)
    # Write then rename, so an interrupted conversion never leaves a truncated G.pth.
    tmp = run_dir / 'G.pth.tmp'
    torch.save(dict(state), tmp)
    os.replace(tmp, run_dir / 'G.pth')
    with open(run_dir / 'config.json', 'w') as f:
        json.dump({**config, 'experiment_name': name}, f, indent=2, sort_keys=True)
    return run_dir


def load_run(run_dir: Union[str, Path]) -> BigGAN.Generator:
    """The converted G of a run folder (BigGAN or BigGANdeep), strictly loaded, in eval mode."""
    run_dir = Path(run_dir)
    with open(run_dir / 'config.json') as f:
        config = json.load(f)
    G = importlib.import_module(config.get('model', 'BigGAN')).Generator(**config)
    G.load_state_dict(torch.load(run_dir / 'G.pth', map_location='cpu', weights_only=True),
                      strict=True)
    return G.eval()


def sample_check(G: BigGAN.Generator, path: Union[str, Path], num: int = 16,
                 truncation: float = 0.5, seed: int = 0) -> torch.Tensor:
    """Write a grid of eval-mode samples of G; returns the images [num, 3, R, R] in [-1, 1].

    z is drawn as for the TF-Hub module: N(0, 1) redrawn outside ±2, times `truncation`.
    """
    from torchvision.utils import save_image

    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(num, G.dim_z, generator=gen)
    while (bad := z.abs() > 2).any():
        z[bad] = torch.randn(int(bad.sum()), generator=gen)
    y = torch.randint(0, G.n_classes, (num,), generator=gen)
    device = next(G.parameters()).device
    with torch.no_grad():
        x = G.eval()(z.to(device) * truncation, G.shared(y.to(device))).cpu()
    save_image(x, path, nrow=int(num ** 0.5 + 0.5), normalize=True, value_range=(-1, 1))
    return x


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    """The converter's command line."""
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--resolution', type=int, default=None, choices=sorted(TFHUB_DIM_Z),
                   help='which TF-Hub generator (default: 128; --hf reads it from the folder)')
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument('--dump', help='.npz or .h5 of the module variables, keyed by TF names')
    source.add_argument('--module_path',
                        help='TF-Hub module folder or URL (needs tensorflow, tensorflow_hub)')
    source.add_argument('--hf', help='a Hugging Face pytorch-pretrained-biggan BigGAN-deep '
                        'folder (pytorch_model.bin, config.json): see hf_converter.py')
    p.add_argument('--bn_interpolation', default='package', choices=('package', 'linear'),
                   help='--hf: BN statistics between truncation grid points (bn_stats.py)')
    p.add_argument('--save_dump', default='', help='also write the variables read to this '
                   '.npz/.h5 (for converting on a machine without TF)')
    p.add_argument('--weights_root', default='weights', help='root of run folders')
    p.add_argument('--name', default='', help='run folder name (default: BigGAN_TFHub_<res>)')
    p.add_argument('--no_ema', action='store_true',
                   help=f'convert the raw weights, not their EMA ({EMA_SUFFIX})')
    p.add_argument('--ignore_unexpected', action='store_true',
                   help='convert even if the module has variables this map does not know')
    p.add_argument('--check', action='store_true',
                   help='reload the written G (strict) and save a sample grid beside it')
    p.add_argument('--check_num', type=int, default=16, help='images in the check grid')
    p.add_argument('--truncation', type=float, default=0.5, help='z truncation of the check '
                   '(--hf: also the one whose BN statistics are stored in G.pth)')
    p.add_argument('--seed', type=int, default=0, help='seed of the check samples')
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    """Convert, write the run folder, optionally check by sampling; 0 on success."""
    args = parse_args(argv)
    if args.hf:
        return hf_converter.main(args, save_run, write_check)
    args.resolution = args.resolution or 128
    config = tfhub_config(args.resolution)
    name = args.name or f'BigGAN_TFHub_{args.resolution}' + ('_raw' if args.no_ema else '')

    # Read and convert (every mismatch is reported at once, without a traceback):
    try:
        variables = (read_tfhub_module(args.module_path) if args.module_path
                     else load_variables(args.dump))
        if args.save_dump:
            save_variables(variables, args.save_dump)
            print(f'wrote {len(variables)} variables to {args.save_dump}')
        state = convert(variables, config, ema=not args.no_ema,
                        ignore_unexpected=args.ignore_unexpected)
    except ConversionError as err:
        print(f'error: {err}', file=sys.stderr)
        return 1
    run_dir = save_run(state, config, args.weights_root, name)
    print(f'wrote {run_dir / "G.pth"} and {run_dir / "config.json"}')

    # Check: reload strictly from disk and sample.
    if args.check:
        checked = write_check(run_dir, 'tfhub_check.png', args)
        if checked is None:
            return 1
        x = checked[1]
        print(f'check: {len(x)} samples, mean {x.mean():.3f}, std {x.std():.3f}; '
              f'grid in {run_dir / "tfhub_check.png"}')
    return 0


def write_check(run_dir: Path, filename: str, args: argparse.Namespace
                ) -> Optional[tuple[nn.Module, torch.Tensor]]:
    """Reload the written G strictly and save a sample grid: (G, samples), or None after
    saying that the samples are not finite."""
    G = load_run(run_dir)
    if torch.cuda.is_available():
        G = G.cuda()
    x = sample_check(G, run_dir / filename, args.check_num, args.truncation, args.seed)
    if not torch.isfinite(x).all():
        print(f'error: the converted G produced non-finite samples ({run_dir / filename})',
              file=sys.stderr)
        return None
    return G, x


if __name__ == '__main__':
    sys.exit(run_cli(main, 'TFHub/converter.py'))
