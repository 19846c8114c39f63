"""The TF-Hub BigGAN generators' variables against `BigGAN.Generator`'s state_dict: which TF
variable each tensor comes from, and the array layouts both ways (TFHub/converter.py uses it
to convert, and to write our G back as TF-named variables).

Mapping, TF (under `module/`) -> ours. Layouts: TF dense `w` is [in, out] (ours [out, in]),
TF conv `w` is HWIO (ours OIHW).
- `linear/w` [n_classes, shared_dim] -> `shared.weight`: TF multiplies a one-hot y by this
  [in, out] matrix, so it already is the [num_embeddings, dim] embedding table (no transpose).
- `Generator/G_Z/G_linear/{w,b,u0}` -> `linear`: TF reshapes the output to [4, 4, C]
  (channels last), we view it as [C, 4, 4], so the output units (columns of w, entries of
  b and u0) are permuted from (h, w, c) to (c, h, w) order.
- `Generator/GBlock{,_1,...}` -> `blocks.i.0`: conv0 -> conv1, conv1 -> conv2, conv_sc ->
  conv_sc; HyperBN -> bn1, HyperBN_1 -> bn2 with `gamma/w` -> `gain.weight` and `beta/w` ->
  `bias.weight`. TF feeds them [z_chunk, y], we feed cat([y, z_chunk]): the input rows are
  reordered. Assumption (the 2019 PyTorch port's): TF's HyperBN scales by 1 + gamma(cond),
  as our ccbn does with `gain`, so gamma maps onto gain unchanged.
- `GBlock.../CrossReplicaBN{,_1}/{accumulated_mean,accumulated_var,accumulation_counter}`
  -> bn1/bn2 `stored_mean`/`stored_var`: the TF statistics are sums over the accumulated
  batches, so ours are accumulated / counter.
- `Generator/attention{,_1,...}/{theta,phi,g,o_conv}` (1x1, no bias) and `gamma` ->
  `blocks.i.1.{theta,phi,g,o}`, `blocks.i.1.gamma`, in order of the blocks that have one.
- `Generator/ScaledCrossReplicaBN/{gamma,beta}` -> `output_layer.0.{gain,bias}`, statistics
  from `Generator/ScaledCrossReplicaBNbn/`; `Generator/conv_2d` -> `output_layer.2`.
- Spectral norm: TF views w as [-1, out] with u [1, out]; we view W as [out, -1] with u
  [1, out]. Both are the same left singular vector, so `u0` copies across (permuted like
  the units for G_linear). TF keeps no singular value: `sv0` (logged, never used by a
  forward) is set to the estimate an eval-mode forward divides by.
- EMA: every `w`, `b`, `gamma`, `beta` has an `/ema_b999900` twin, used by default
  (`--no_ema` takes the raw ones); `u0` and the BN statistics exist once.
Unverified without TensorFlow here: the `1 + gamma` convention, that accumulated_var sums
variances, where CrossReplicaBN sits in a GBlock, that u0 has no EMA twin, and the output BN's
eps (kept at 2019's 1e-5; TF may use 1e-4). Under these assumptions `Layouts.to_ours` and
`Layouts.to_tf` are exact inverses.

Example:
    G = BigGAN.Generator(**converter.tfhub_config(128))  # TFHub/converter.py
    for e in variable_map(G):  # e.g. Entry('linear.weight', ('Generator/G_Z/G_linear/w',), ...)
        print(e.key, [tf_name(n, e.ema) for n in e.tf])
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import BigGAN  # noqa: E402

EMA_SUFFIX = 'ema_b999900'


@dataclass(frozen=True)
class Entry:
    """One tensor of our state_dict and the TF variable(s) it comes from."""
    key: str                 # our state_dict key
    tf: tuple[str, ...]      # TF names without `module/`, EMA suffix and `:0`
    kind: str                # layout transform, see Layouts
    ema: bool                # the TF variable has an EMA twin


def _scope(base: str, i: int) -> str:
    """TF's name for the i-th scope of that name: base, base_1, base_2, ..."""
    return base if i == 0 else f'{base}_{i}'


def variable_map(G: BigGAN.Generator) -> list[Entry]:
    """Every state_dict entry of G except `sv*`, with its TF source (see the module doc)."""
    entries = [Entry('shared.weight', ('linear/w',), 'same', True)]

    def sn_layer(ours: str, tf: str, w_kind: str, vec_kind: str = 'same', bias: bool = True):
        entries.append(Entry(f'{ours}.weight', (f'{tf}/w',), w_kind, True))
        if bias:
            entries.append(Entry(f'{ours}.bias', (f'{tf}/b',), vec_kind, True))
        entries.append(Entry(f'{ours}.u0', (f'{tf}/u0',), vec_kind, False))

    def stats(ours: str, tf: str):
        for stat, acc in (('stored_mean', 'accumulated_mean'), ('stored_var', 'accumulated_var')):
            entries.append(Entry(f'{ours}.{stat}', (f'{tf}/{acc}', f'{tf}/accumulation_counter'),
                                 'stat', False))

    sn_layer('linear', 'Generator/G_Z/G_linear', 'first_w', 'first_vec')
    num_attn = 0
    for i, stage in enumerate(G.blocks):
        ours, tf = f'blocks.{i}.0', f'Generator/{_scope("GBlock", i)}'
        convs = [('conv1', 'conv0'), ('conv2', 'conv1')]
        convs += [('conv_sc', 'conv_sc')] if stage[0].learnable_sc else []
        for conv, tf_conv in convs:
            sn_layer(f'{ours}.{conv}', f'{tf}/{tf_conv}', 'conv')
        for j, bn in enumerate(('bn1', 'bn2')):
            hyper = f'{tf}/{_scope("HyperBN", j)}'
            sn_layer(f'{ours}.{bn}.gain', f'{hyper}/gamma', 'hyper', bias=False)
            sn_layer(f'{ours}.{bn}.bias', f'{hyper}/beta', 'hyper', bias=False)
            stats(f'{ours}.{bn}', f'{tf}/{_scope("CrossReplicaBN", j)}')
        if len(stage) > 1:
            attn = f'Generator/{_scope("attention", num_attn)}'
            num_attn += 1
            for conv, tf_conv in (('theta', 'theta'), ('phi', 'phi'), ('g', 'g'), ('o', 'o_conv')):
                sn_layer(f'blocks.{i}.1.{conv}', f'{attn}/{tf_conv}', 'conv', bias=False)
            entries.append(Entry(f'blocks.{i}.1.gamma', (f'{attn}/gamma',), 'same', True))
    for ours, tf in (('gain', 'gamma'), ('bias', 'beta')):
        entries.append(Entry(f'output_layer.0.{ours}', (f'Generator/ScaledCrossReplicaBN/{tf}',),
                             'same', True))
    stats('output_layer.0', 'Generator/ScaledCrossReplicaBNbn')
    sn_layer('output_layer.2', 'Generator/conv_2d', 'conv')
    return entries


def tf_name(name: str, ema: bool) -> str:
    """Full TF variable name: `module/<name>[/ema_b999900]:0`."""
    return f'module/{name}' + (f'/{EMA_SUFFIX}' if ema else '') + ':0'


class Layouts:
    """TF <-> ours array layouts for one G; exact (transposes, reorders, one division)."""

    def __init__(self, G: BigGAN.Generator):
        self.c0, self.bw = G.arch['in_channels'][0], G.bottom_width
        self.shared_dim = G.shared_dim

    def to_ours(self, kind: str, arrays: list[np.ndarray]) -> np.ndarray:
        """Our tensor from its TF variable(s)."""
        a = arrays[0]
        if kind == 'conv':  # HWIO -> OIHW
            out = a.transpose(3, 2, 0, 1)
        elif kind == 'hyper':  # [cond, C], rows [z_chunk, y] -> [C, cond], columns [y, z_chunk]
            chunk = a.shape[0] - self.shared_dim
            out = np.concatenate([a[chunk:], a[:chunk]]).T
        elif kind == 'first_w':  # [chunk, (h, w, c)] -> [(c, h, w), chunk]
            out = a.reshape(-1, self.bw, self.bw, self.c0).transpose(0, 3, 1, 2)
            out = out.reshape(a.shape[0], -1).T
        elif kind == 'first_vec':  # b [(h, w, c)] or u0 [1, (h, w, c)] -> (c, h, w) order
            out = a.reshape(-1, self.bw, self.bw, self.c0).transpose(0, 3, 1, 2).reshape(a.shape)
        elif kind == 'stat':  # accumulated sum / accumulation counter
            out = a / np.asarray(arrays[1], dtype=np.float64).reshape(())
        else:
            out = a
        return np.ascontiguousarray(out, dtype=np.float32)

    def to_tf(self, kind: str, a: np.ndarray) -> tuple[np.ndarray, ...]:
        """The TF variable(s) holding our tensor a (a counter of 1 for statistics)."""
        if kind == 'conv':  # OIHW -> HWIO
            out = a.transpose(2, 3, 1, 0)
        elif kind == 'hyper':
            rows = a.T  # [cond, C], rows [y, z_chunk]
            out = np.concatenate([rows[self.shared_dim:], rows[:self.shared_dim]])
        elif kind == 'first_w':
            out = a.T.reshape(-1, self.c0, self.bw, self.bw).transpose(0, 2, 3, 1)
            out = out.reshape(a.shape[1], -1)
        elif kind == 'first_vec':
            out = a.reshape(-1, self.c0, self.bw, self.bw).transpose(0, 2, 3, 1).reshape(a.shape)
        elif kind == 'stat':
            return np.ascontiguousarray(a, dtype=np.float32), np.float32(1)
        else:
            out = a
        return (np.ascontiguousarray(out, dtype=np.float32),)
