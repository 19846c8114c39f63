"""Shared test helpers: the repository root, where the team's `../shared/` folder lives, and a
tiny packed dataset."""
import os
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# The team's reference files live beside the repository (`../shared/`); CI lays a copy
# there. A user's clone does not have it, so tests that need it skip with a reason.
SHARED = Path(os.environ.get('BIGGAN_SHARED', ROOT.parent / 'shared'))


def shared_file(relpath: str) -> Path:
    """Path of a file under ../shared/, or skip the test saying what is missing."""
    path = SHARED / relpath
    if not path.exists():
        pytest.skip(f'reference file {path} is absent (it lives in the team\'s shared/ folder '
                    f'beside the repository; set BIGGAN_SHARED to point elsewhere)')
    return path


def write_hdf5(path: Path, n: int = 16, n_classes: int = 3, resolution: int = 32) -> Path:
    """A tiny packed dataset of random images in make_hdf5.py's layout."""
    rng = np.random.default_rng(0)
    with h5py.File(path, 'w') as f:
        f.create_dataset('imgs', data=rng.integers(0, 256, (n, 3, resolution, resolution),
                                                   dtype=np.uint8))
        f.create_dataset('labels', data=np.arange(n, dtype=np.int64) % n_classes)
        f.attrs['n_classes'] = n_classes
        f.attrs['resolution'] = resolution
    return path


class TinyInception(torch.nn.Module):
    """A cheap deterministic stand-in for the Inception net: (pool [B, 2048], logits [B, 10])
    of images of any size (pooled to 8x8 first)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.pool = torch.nn.Linear(3 * 8 * 8, 2048)
        self.fc = torch.nn.Linear(2048, 10)

    def forward(self, x):
        pool = self.pool(torch.nn.functional.adaptive_avg_pool2d(x, 8).flatten(1)).relu()
        return pool, self.fc(pool)


def stand_in_inception(monkeypatch, folder: Path, net: torch.nn.Module | None = None) -> Path:
    """Make inception_utils use `net` (a TinyInception unless given) as the Inception network
    whatever its weights file; returns such a file in `folder` (it only has to exist)."""
    import inception_utils
    net = TinyInception() if net is None else net
    monkeypatch.setattr(inception_utils, 'load_inception_net', lambda *args, **kwargs: net)
    monkeypatch.setattr(inception_utils, '_load_weights', lambda *args, **kwargs: net)
    weights = folder / 'stand_in_inception.pth'
    weights.write_bytes(b'stand-in')
    return weights


class FixedLatents:
    """Feeds rows of a fixed z/y table (like utils.Latents.sample_), so a training step and a
    hand-written reference of it see the same latents."""

    def __init__(self, z, y, batch):
        self.z, self.y, self.batch, self.pos = z, y, batch, 0

    def sample_(self):
        rows = slice(self.pos, self.pos + self.batch)
        self.pos += self.batch
        return self.z[rows], self.y[rows]
