"""Per-truncation batch-norm statistics: the table a converted BigGAN-deep G keeps beside it.

The Hugging Face `pytorch-pretrained-biggan` generators store, for every batch norm, the
running means and variances measured at `n_stats` truncations 0, 1/(n_stats-1), ..., 1
(51 of them: 0, 0.02, ..., 1), and use the ones for the truncation they sample at. Our G has
one set (`stored_mean`/`stored_var`). `TFHub/converter.py --hf` writes the whole table beside
the weights (TABLE_FILE) and bakes one truncation into them; sample.py sets the statistics for
its --truncation t from the table (`apply`), so any t needs no new conversion.

Between grid points (`stats_at`), two interpolations:
- `package` (the default): exactly the package's arithmetic, so a converted G reproduces its
  images at every t. With f = frac(t / step) and i = floor(t / step) it takes
  f * stats[i] + (1 - f) * stats[i + 1]: the weights are the reverse of linear interpolation,
  so it is linear interpolation only at grid points and midpoints (f = 0 or 0.5). Its float
  division also misses a few grid points: 0.14, 0.28 and 0.56 land just above themselves
  (0.14 / 0.02 = 7.000...01) and take the next point's statistics, 0.58 and 0.94 just below
  and take the previous point's; kept, as those are the package's images.
- `linear`: textbook linear interpolation, (1 - f) * stats[i] + f * stats[i + 1], with t
  within 1e-9 of a grid point snapped to it. It equals `package` at grid points (but those
  few) and midpoints, and varies continuously in t.
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Optional

import torch
import torch.nn as nn

TABLE_FILE = 'bn_stats_by_truncation.pth'
INTERPOLATIONS = ('package', 'linear')


def grid_position(t: float, n_stats: int, interpolation: str) -> tuple[int, float]:
    """(i, f): t lies f of the way from grid point i to i + 1, as `interpolation` reads it."""
    if not 0 <= t <= 1:
        raise ValueError(f'truncation {t}: the per-truncation BN statistics cover 0 to 1')
    if interpolation == 'package':
        f, i = math.modf(t / (1.0 / (n_stats - 1)))
        return int(i), f
    if interpolation == 'linear':
        pos = t * (n_stats - 1)
        if abs(pos - round(pos)) < 1e-9:
            return int(round(pos)), 0.0
        return int(pos), pos - int(pos)
    raise ValueError(f'interpolation {interpolation!r}: choose one of {INTERPOLATIONS}')


def stats_at(stats: torch.Tensor, t: float, interpolation: str = 'package') -> torch.Tensor:
    """One row [C] for truncation t from per-truncation statistics [n_stats, C]."""
    i, f = grid_position(t, stats.size(0), interpolation)
    if f == 0.0:
        return stats[i].clone()
    if interpolation == 'package':  # the package's expression, for the same float rounding
        return stats[i] * f + stats[i + 1] * (1 - f)
    return stats[i] * (1 - f) + stats[i + 1] * f


def make_table(stats: dict[str, tuple[torch.Tensor, torch.Tensor]], interpolation: str,
               G: nn.Module, source: str) -> dict:
    """The table of {BN module name: (means, vars) [n_stats, C]} for the converted G."""
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f'interpolation {interpolation!r}: choose one of {INTERPOLATIONS}')
    return {'stats': {name: {'mean': m.float().clone(), 'var': v.float().clone()}
                      for name, (m, v) in stats.items()},
            'interpolation': interpolation, 'source': source,
            'fingerprint': fingerprint(G)}


def fingerprint(G: nn.Module) -> float:
    """A number that changes when G's weights do: the table only fits the weights it came with
    (a fine-tuned G has statistics of its own)."""
    return float(sum(p.detach().double().abs().sum() for p in G.parameters()))


def table_stats(table: dict, t: float) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{BN module name: (mean, var)} for truncation t."""
    how = table['interpolation']
    return {name: (stats_at(s['mean'], t, how), stats_at(s['var'], t, how))
            for name, s in table['stats'].items()}


def save_table(table: dict, run_dir: str) -> str:
    """Write the table beside the weights (write, then rename); returns its path."""
    path = os.path.join(run_dir, TABLE_FILE)
    torch.save(table, path + '.tmp')
    os.replace(path + '.tmp', path)
    return path


def load_table(run_dir: str) -> Optional[dict]:
    """The run's table, or None when it has none."""
    path = os.path.join(run_dir, TABLE_FILE)
    if not os.path.isfile(path):
        return None
    return torch.load(path, map_location='cpu', weights_only=True)


def fits(table: dict, G: nn.Module) -> bool:
    """Whether the table belongs to these weights (within float noise of a reload)."""
    own = fingerprint(G)
    return math.isclose(own, table['fingerprint'], rel_tol=1e-6)


@torch.no_grad()
def apply(G: nn.Module, table: dict, t: float) -> int:
    """Set G's stored BN statistics to the table's for truncation t; returns how many BNs."""
    modules = dict(G.named_modules())
    stats = table_stats(table, t)
    for name, (mean, var) in stats.items():
        m = modules.get(name)
        if m is None or getattr(m, 'stored_mean', None) is None:
            raise ValueError(f'the BN statistics table names {name}, which this G has no '
                             f'batch norm for: the table belongs to another model')
        if m.stored_mean.shape != mean.shape:
            raise ValueError(f'the BN statistics table has {tuple(mean.shape)} statistics '
                             f'for {name}, whose stored_mean is {tuple(m.stored_mean.shape)}')
        m.stored_mean.copy_(mean)
        m.stored_var.copy_(var)
    return len(stats)


def use_for_truncation(G: nn.Module, run_dir: str, t: float) -> Optional[dict]:
    """In sample.py: set G's statistics for truncation t from the run's table, saying so.
    Returns the table (None when the run has none, or it does not fit these weights)."""
    table = load_table(run_dir)
    if table is None:
        return None
    if not fits(table, G):
        warnings.warn(f'{os.path.join(run_dir, TABLE_FILE)} belongs to other weights than the '
                      f'G loaded (fine-tuned since?): its BN statistics are not used',
                      stacklevel=2)
        return None
    if t > 0:
        n = apply(G, table, t)
        print(f'BN statistics for truncation {t} from {TABLE_FILE} ({n} batch norms, '
              f'{table["interpolation"]} interpolation)')
    else:
        print(f'{TABLE_FILE}: the BN statistics stored with the weights are used (give '
              f'--truncation t for those of t)')
    return table
