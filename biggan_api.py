"""Sample a trained BigGAN from Python in one call: for notebooks and other programs.

    import biggan_api
    run = biggan_api.load('weights/my_run')     # a run folder, a G*.pth file in one, or a name
    run.class_names[207]                        # 'golden retriever' (None: the run has none)
    images = run.sample(['golden retriever', 980], seeds=range(8), truncation=0.5)
    pil_images = run.sample('daisy', seeds='0-3', as_pil=True)

`load` finds and configures the run exactly as sample.py does (sample.resolve_config and
sample.build_sampler): its saved config, overridden by keywords named as sample.py's flags
(use_ema=False, accumulate_stats=True, num_standing_accumulations=32, truncation=0.5,
load_weights='best0', weights_root='...', ...). Any run sample.py samples loads: ours, a 2019
run folder, a TFHub/converter.py folder (TF-Hub BigGAN, or a Hugging Face BigGAN-deep), or a
published Hugging Face BigGAN-deep by name ('biggan-deep-128', '-256', '-512'): fetched through
the pytorch-pretrained-biggan package's download cache (offline, only if already there) and
converted once into <torch hub dir>/biggan_converted/<name>/ (HF_CONVERTED_DIR). Images
come from seeded_samples.py, so `run.sample` equals sample.py --classes --seeds pixel for pixel
for the same run, seeds and truncation. torch.hub exposes `load` through hubconf.py.
Bad input (a run that is not there, a class not in the run, a bad seed or truncation) raises
sample.SampleError (re-exported here) before anything is sampled.
"""
from __future__ import annotations

import difflib
import importlib
import os
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
from PIL import Image

import class_names as names_
import sample as sample_py
import seeded_samples
import utils
from sample import SampleError

__all__ = ['load', 'BigGANRun', 'SampleError', 'to_pil']

Seeds = Union[int, str, Iterable[int]]  # 5, '0-63' / '1,5,9', or e.g. range(8)
ROOT = Path(__file__).resolve().parent
HF_CONVERTED_DIR = 'biggan_converted'  # under torch.hub.get_dir(): published names, converted
HF_TRUNCATION = 0.4  # whose BN statistics G.pth holds; .sample sets those of its truncation


class BigGANRun:
    """A loaded run: its G (`.G`, in eval mode), config and class names, sampled by class and
    seed with `.sample`."""

    def __init__(self, sampler: sample_py.Sampler, truncation: float):
        self.sampler = sampler
        self.truncation = truncation  # the default of .sample: the run's, or load(truncation=)

    config = property(lambda self: self.sampler.config, doc='the resolved run config')
    G = property(lambda self: self.sampler.G, doc='the generator: G(z, G.shared(y))')
    device = property(lambda self: self.sampler.device, doc='where G runs')
    n_classes = property(lambda self: self.config['n_classes'], doc='how many classes')
    resolution = property(lambda self: self.config['resolution'], doc='image side in pixels')
    class_names = property(lambda self: self.config['class_names'],
                           doc='one name per class, in label order (None: the run has none)')

    def __repr__(self) -> str:
        trunc = f'truncation {self.truncation:g}' if self.truncation else 'no truncation'
        return (f'BigGANRun({self.sampler.weights_file}, itr {self.sampler.itr}, '
                f'{self.n_classes} classes, {self.resolution}x{self.resolution}, {trunc})')

    def class_index(self, name: Union[int, str]) -> int:
        """The index of a class given by name (or index), checked against the run."""
        return self.class_indices(name)[0]

    def class_indices(self, classes: Union[int, str, Sequence[Union[int, str]]]) -> list[int]:
        """The indices of classes given by index or name (see class_names.class_indices)."""
        try:
            return names_.class_indices(classes, self.class_names, self.n_classes)
        except names_.ClassError as err:
            raise SampleError(str(err)) from None

    def sample(self, classes: Union[int, str, Sequence[Union[int, str]]], seeds: Seeds,
               truncation: Optional[float] = None, as_pil: bool = False
               ) -> Union[torch.Tensor, list[Image.Image]]:
        """Images of each class (index or name) from each seed, class-major (image i * S + j
        is classes[i] from seeds[j]): float32 [N, 3, R, R] in [-1, 1] on the CPU, or PIL RGB
        images. truncation: None takes the run's (self.truncation), 0 none."""
        t = self.truncation if truncation is None else float(truncation)
        sample_py.check_truncation(t, self.config, 'truncation')
        indices, seed_list = self.class_indices(classes), seed_values(seeds)
        images = seeded_samples.seed_images(self.sampler, indices, seed_list, t)
        return to_pil(images) if as_pil else images


def seed_values(seeds: Seeds) -> list[int]:
    """Seeds as a list: an int, a string as sample.py --seeds takes it, or ints."""
    try:
        if isinstance(seeds, str):
            return seeded_samples.parse_seeds(seeds)
        values = [seeds] if isinstance(seeds, int) else list(seeds)
    except (ValueError, TypeError) as err:
        raise SampleError(f'seeds {err}') from None
    bad = [s for s in values if isinstance(s, bool) or not isinstance(s, int)
           or not 0 <= s < 2 ** 63]
    if bad or not values:
        raise SampleError(f'seeds {seeds!r}: give integers from 0 to 2^63 - 1 (e.g. range(8) '
                          f"or '0-7'){f'; not {bad[0]!r}' if bad else ''}")
    return values


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images [N, 3, R, R] in [-1, 1] as PIL RGB images, rounded as sample.py's PNGs are."""
    return [Image.fromarray(x) for x in utils.to_uint8(images).cpu().contiguous().numpy()]


def flag_args(flags: dict[str, Any]) -> list[str]:
    """Keywords as sample.py flags: True -> --name, False -> --no_name, None left out."""
    known = {f.name for f in utils.all_flags() + utils.SAMPLE_FLAGS} | {'weights'}
    argv = []
    for name, value in flags.items():
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            raise SampleError(f'load(): no flag {name!r} in sample.py'
                              + (f"; did you mean {', '.join(close)}?" if close else ''))
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(f"--{'' if value else 'no_'}{name}")
        else:
            argv += [f'--{name}', str(value)]
    return argv


def load(run: Union[str, Path], *, device: Union[str, torch.device, None] = None,
         **flags: Any) -> BigGANRun:
    """Load a run to sample: a run folder, a G*.pth file in one, or an experiment name (found
    under weights_root / base_root, as sample.py finds it). `flags` override its saved config
    (named as sample.py's flags); `device` defaults to the GPU if there is one."""
    path = Path(run).expanduser()
    if not path.exists() and str(run) in _tfhub('hf_converter').HF_NAMES:
        path = converted_hf_run(str(run))
    argv = (['--weights', str(path)] if path.exists() else ['--experiment_name', str(run)])
    try:
        config, weights_file, itr = sample_py.resolve_config(argv + flag_args(flags))
    except SystemExit:  # argparse has printed what it could not parse
        raise SampleError(f'load({run!r}, ...): a keyword value sample.py cannot parse '
                          f'(see above)') from None
    truncation = config['truncation']
    sample_py.check_truncation(truncation, config, 'truncation')
    rng = utils.rng_state()  # loading seeds the global RNGs: the caller's draws go on as before
    try:
        # Built at truncation 0: a converted G keeps the BN statistics stored with its weights,
        # and .sample sets those of the truncation it is asked for (as sample.py builds at t).
        sampler = sample_py.build_sampler({**config, 'truncation': 0.0}, weights_file, itr,
                                          torch.device(device) if device else None)
    finally:
        utils.set_rng_state(rng)
    sampler.config['truncation'] = truncation
    return BigGANRun(sampler, truncation)


def _tfhub(module: str):
    """A module of TFHub/ (a folder of scripts, not a package)."""
    folder = str(ROOT / 'TFHub')
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(module)


def converted_hf_run(name: str) -> Path:
    """The run folder of a published Hugging Face BigGAN-deep (`biggan-deep-128`, ...),
    converted on first use (TFHub/hf_converter.py) from the package's download cache."""
    hf_converter, converter = _tfhub('hf_converter'), _tfhub('converter')
    root = Path(torch.hub.get_dir()) / HF_CONVERTED_DIR
    run_dir = root / name
    if (run_dir / 'G.pth').is_file() and (run_dir / 'config.json').is_file():
        return run_dir
    try:
        hf, state = hf_converter.read_folder(name)
        G, config, table = hf_converter.convert(state, hf, HF_TRUNCATION)
    except ValueError as err:  # HFConversionError: offline and not cached, a damaged file
        raise SampleError(str(err)) from None
    partial = f'{name}.partial{os.getpid()}'  # renamed once whole: a kill leaves no half run
    hf_converter.write_run(G, config, table, root, partial, converter.save_run)
    shutil.rmtree(run_dir, ignore_errors=True)
    os.replace(root / partial, run_dir)
    return run_dir
