"""The 2019 release's Python names that this code keeps for 2019 code and notebooks.

utils.py and inception_utils.py re-export these in their sections "2019 names
(compatibility)", so `utils.prepare_z_y`, `utils.sample`, `utils.Distribution`, the dataset
dicts, `inception_utils.numpy_calculate_frechet_distance`, ... work as the 2019 sample.py and
notebooks call them (tests/test_compat2019.py runs the 2019 sample.py). This code's own
interfaces are utils.Latents, checkpoints.load_weights, inception_utils.prepare_inception_metrics.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import checkpoints
import datasets
import flags
import metrics
from inception_net import InceptionNet

Array = np.ndarray

# ----------------------------------------------------------------------------------------
# utils
# ----------------------------------------------------------------------------------------

# The 2019 per-dataset dicts (views of datasets.DATASETS), and its activations by --G_nl name.
root_dict = datasets.root_dict
imsize_dict = datasets.imsize_dict
nclass_dict = datasets.nclass_dict
classes_per_sheet_dict = datasets.classes_per_sheet_dict
activation_dict = {'inplace_relu': nn.ReLU(inplace=True), 'relu': nn.ReLU(inplace=False),
                   'ir': nn.ReLU(inplace=True)}
get_data_loaders = datasets.get_data_loaders

# Config keys the 2019 scripts set that no flag sets: 'no_optim' (2019 models built their own
# optimizers unless it was on; ours never do), so model.Generator(**config) accepts it.
LEGACY_CONFIG_KEYS = frozenset({'no_optim'})


def config_keys() -> set[str]:
    """Every key a run config may hold (flags.config_keys plus 2019's LEGACY_CONFIG_KEYS)."""
    return flags.config_keys() | LEGACY_CONFIG_KEYS


def load_weights(G: Optional[nn.Module], D: Optional[nn.Module], state_dict: dict,
                 weights_root: str, experiment_name: str, name_suffix: Optional[str] = None,
                 G_ema: Optional[nn.Module] = None, strict: bool = True,
                 load_optim: bool = True, *, G_optim: Optional[torch.optim.Optimizer] = None,
                 D_optim: Optional[torch.optim.Optimizer] = None) -> dict:
    """checkpoints.load_weights in 2019's call form too: (G, D, state_dict, weights_root,
    experiment_name, name_suffix=None, G_ema=None, strict=True, load_optim=True).

    As in 2019, every key of `state_dict` is refreshed from state_dict.pth, `config` included
    (2019 sample.py's --config_from_name reads it there); a resume, through
    checkpoints.load_weights, keeps its own config. `load_optim` loads G.optim / D.optim where
    a module carries one as 2019's models did (ours do not: pass G_optim=, D_optim=). An empty
    name_suffix means none. Returns the whole saved state.
    """
    if load_optim:
        G_optim = G_optim or getattr(G, 'optim', None)
        D_optim = D_optim or getattr(D, 'optim', None)
    saved = checkpoints.load_weights(G, D, state_dict, weights_root, experiment_name,
                                     name_suffix=name_suffix or None, G_ema=G_ema,
                                     strict=strict, G_optim=G_optim, D_optim=D_optim)
    if 'config' in state_dict and 'config' in saved:
        state_dict['config'] = saved['config']
    return saved


def prepare_root(config: dict) -> None:
    """Make the weights, logs and samples folders of a config."""
    for key in ('weights_root', 'logs_root', 'samples_root'):
        os.makedirs(config[key], exist_ok=True)


def join_strings(base_string: str, strings: list[Optional[str]]) -> str:
    """Join the non-empty strings with base_string (None and '' are left out)."""
    return base_string.join(item for item in strings if item)


def count_parameters(module: nn.Module) -> int:
    """Print (as 2019 did) and return the number of parameters of a module."""
    count = sum(p.numel() for p in module.parameters())
    print(f'Number of parameters: {count}')
    return count


def _default_device(device: Optional[Union[str, torch.device]]) -> Union[str, torch.device]:
    """`device`, else CUDA when there is one, else the CPU (2019's default was 'cuda')."""
    return device or ('cuda' if torch.cuda.is_available() else 'cpu')


def sample_1hot(batch_size: int, num_classes: int,
                device: Optional[Union[str, torch.device]] = None) -> torch.Tensor:
    """Uniform class indices [batch_size] (2019's name: not one-hot); device as prepare_z_y."""
    return torch.randint(0, num_classes, (batch_size,), device=_default_device(device))


class Distribution(torch.Tensor):
    """2019's z_/y_: a tensor that redraws itself in place with `sample_()`.

    'normal' draws N(mean, var²) (`var` is the std, as 2019 used it; sample.py's truncation
    sweep sets it), 'categorical' uniform indices below `num_categories`. As in 2019 the
    attributes `mean` and `var` hide Tensor.mean()/var() (use torch.mean(z_)). Operations on
    it give plain tensors.
    """
    __torch_function__ = torch._C._disabled_torch_function_impl

    def __new__(cls, data: torch.Tensor) -> Distribution:
        return torch.Tensor._make_subclass(cls, data)

    def init_distribution(self, dist_type: str, **kwargs: Any) -> None:
        """Set the law: 'normal' (mean=, var=) or 'categorical' (num_categories=)."""
        if dist_type not in ('normal', 'categorical'):
            raise ValueError(f'Distribution type {dist_type!r}: normal or categorical')
        self.dist_type, self.dist_kwargs = dist_type, kwargs
        if dist_type == 'normal':
            self.mean, self.var = kwargs['mean'], kwargs['var']
        else:
            self.num_categories = kwargs['num_categories']

    def sample_(self) -> Distribution:
        """Redraw in place; returns self."""
        if self.dist_type == 'normal':
            self.normal_(self.mean, self.var)
        else:
            self.random_(0, self.num_categories)
        return self

    def to(self, *args: Any, **kwargs: Any) -> Distribution:
        """torch.Tensor.to, keeping the law."""
        new = Distribution(super().to(*args, **kwargs))
        new.init_distribution(self.dist_type, **self.dist_kwargs)
        if self.dist_type == 'normal':  # the law as it is now (the sweep changes var)
            new.mean, new.var = self.mean, self.var
        return new


def prepare_z_y(G_batch_size: int, dim_z: int, nclasses: int,
                device: Optional[Union[str, torch.device]] = None, fp16: bool = False,
                z_var: float = 1.0) -> tuple[Distribution, Distribution]:
    """2019's latents: z_ [B, dim_z] ~ N(0, z_var²) (float16 with fp16) and y_ [B] int64
    class indices, as Distributions (`z_.sample_()`, `z_.var`). `device` defaults to CUDA when
    there is one, else the CPU (2019: always 'cuda'). `Latents` is this code's own form."""
    device = _default_device(device)
    z_ = Distribution(torch.randn(G_batch_size, dim_z))
    z_.init_distribution('normal', mean=0, var=z_var)
    z_ = z_.to(device, torch.float16 if fp16 else torch.float32)
    y_ = Distribution(torch.zeros(G_batch_size))
    y_.init_distribution('categorical', num_categories=nclasses)
    return z_, y_.to(device, torch.int64)


@torch.no_grad()
def sample(G: nn.Module, z_: Distribution, y_: Distribution, config: Optional[dict] = None
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """2019's sample(): redraw z_ and y_ (from `prepare_z_y`), return (G(z, G.shared(y)), y).

    config['parallel'] changes nothing (see `sample_sheet`). y is a copy: on the CPU,
    2019's .cpu() of y_ would keep the buffer that the next call redraws.
    """
    z_.sample_()
    y_.sample_()
    y = y_.as_subclass(torch.Tensor)
    return G(z_.as_subclass(torch.Tensor), G.shared(y)), y.clone()


# ----------------------------------------------------------------------------------------
# inception_utils
# ----------------------------------------------------------------------------------------


def numpy_calculate_frechet_distance(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array,
                                     eps: float = 1e-6) -> float:
    """FID between N(mu1, sigma1) and N(mu2, sigma2) on the CPU (metrics.py's). `eps`, 2019's
    diagonal offset for a singular product, is taken and unused: eigenvalues need none."""
    return metrics.numpy_calculate_frechet_distance(mu1, sigma1, mu2, sigma2)


def torch_cov(m: torch.Tensor, rowvar: bool = False) -> torch.Tensor:
    """Unbiased covariance; the variables are the columns of m [N, D] unless `rowvar` (a
    single row, or a 1-D m, is one variable)."""
    m = m.view(1, -1) if m.dim() < 2 else m
    return torch.cov(m if rowvar or m.size(0) == 1 else m.t()).squeeze()


def WrapInception(net: torchvision.models.Inception3) -> InceptionNet:
    """2019's wrapper of torchvision's Inception-v3: (pool [B, 2048], logits [B, 1000]) of
    images in [-1, 1]."""
    return InceptionNet(net, 'torchvision')


@torch.no_grad()
def accumulate_inception_activations(sample: Callable, net: nn.Module,
                                     num_inception_images: int = 50000
                                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(pool, softmax probabilities, labels) of the images of repeated sample() until there
    are at least num_inception_images (whole batches, as 2019 kept them)."""
    pool, probs, labels = [], [], []
    while sum(len(p) for p in pool) < num_inception_images:
        images, y = sample()
        pool_val, logits = net(images.float())
        pool.append(pool_val)
        probs.append(F.softmax(logits, 1))
        labels.append(y)
    return torch.cat(pool), torch.cat(probs), torch.cat(labels)


def prepare_inception_metrics_2019(dataset: str, no_fid: bool,
                                    device: Optional[Union[str, torch.device]]) -> Callable:
    """2019's get_inception_metrics for `dataset`, whose moments are the file 2019 read
    (<dataset without _hdf5>_inception_moments.npz in the working folder; a path dataset's
    beside it). The network and moments load at the first call: 2019's sample.py prepares
    the metrics whatever it samples, and needs Inception weights only when it computes them
    (then a missing file gets prepare_inception_metrics's error, saying what to get where)."""
    prepared = []

    def get_inception_metrics(sample: Callable, num_inception_images: int,
                              num_splits: int = 10, prints: bool = True,
                              use_torch: bool = True) -> tuple[float, float, float]:
        """2019's (IS mean, IS std, FID; 9999.0 with no_fid). `prints` and `use_torch` are
        taken: nothing is printed, and both FID routes are one method here."""
        if not prepared:
            from inception_utils import prepare_inception_metrics  # it calls this module
            moments = datasets.resolve_dataset(dataset, '.').moments_path
            prepared.append(prepare_inception_metrics(moments, device=device, no_fid=no_fid))
        IS_mean, IS_std, FID = prepared[0](sample, num_inception_images, num_splits)
        return IS_mean, IS_std, 9999.0 if FID is None else FID

    return get_inception_metrics
