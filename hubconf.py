"""torch.hub entry points: a trained BigGAN run, loaded to sample by class and seed.

    import torch
    run = torch.hub.load('path/to/BigGAN-PyTorch', 'biggan', 'weights/my_run', source='local')
    images = run.sample('golden retriever', seeds=range(4), truncation=0.5, as_pil=True)

The run is a folder (or G*.pth file) on this machine; relative paths are taken from the current
directory. Keywords are biggan_api.load's (sample.py's flags, and `device`).
"""
from __future__ import annotations

from typing import Any

import biggan_api

# Checked by torch.hub before loading: the packages these entry points import.
dependencies = ['torch', 'torchvision', 'numpy', 'scipy', 'h5py', 'tqdm', 'PIL']


def biggan(run: str, **kwargs: Any) -> biggan_api.BigGANRun:
    """A trained BigGAN run (ours, a 2019 run, a converted TF-Hub or Hugging Face BigGAN-deep),
    configured from its saved config; `.sample(classes, seeds, truncation, as_pil)` gives
    images by class index or name and seed, `.G` the generator. See biggan_api.load."""
    return biggan_api.load(run, **kwargs)
