"""Samplers of the training data stream: the order of every epoch is a pure function of
(seed, epoch), and global batches are sharded across DDP ranks (`batch_size` is per rank).

`MultiEpochSampler` (--use_multiepoch_sampler) runs every epoch in one pass and skips ahead
on resume; `EpochSampler` is the per-epoch sampler (`set_epoch(epoch, start_batch)`). With
`draws`, both yield (index, position in the stream) so that augmentations are drawn per
position (see datasets.ImageDataset). datasets.get_data_loaders builds them.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


def epoch_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """The data order of one epoch: a pure function of (seed, epoch)."""
    if not shuffle:
        return np.arange(num_samples)
    return np.random.default_rng([seed, epoch]).permutation(num_samples)


class MultiEpochSampler(Sampler[int]):
    """Indices for num_epochs epochs of per-epoch permutations, from iteration start_itr.

    It always shuffles, as the 2019 `--use_multiepoch_sampler` did whatever `--shuffle` said:
    epoch k is epoch_order(seed, k), the order EpochSampler gives epoch k when shuffling.
    The epochs form one stream cut into global batches of batch_size * world_size (batches
    run across epoch ends, so none is short); rank r takes slice r of each global batch.
    With `minibatches` > 1 (D steps x accumulations) each global batch is that many global
    minibatches and rank r takes slice r of each, so N ranks see exactly the minibatches one
    process with the N-times batch sees. Only the current epoch's permutation is held.
    With `draws` it yields (index, position in the stream) pairs (see ImageDataset).
    """

    def __init__(self, num_samples: int, num_epochs: int, batch_size: int, *,
                 start_itr: int = 0, seed: int = 0, rank: int = 0, world_size: int = 1,
                 minibatches: int = 1, draws: bool = False):
        _check_minibatches(batch_size, minibatches)
        self.num_samples, self.num_epochs, self.batch_size = num_samples, num_epochs, batch_size
        self.start_itr, self.seed = start_itr, seed
        self.rank, self.world_size, self.minibatches = rank, world_size, minibatches
        self.draws = draws
        self.num_itrs = num_samples * num_epochs // (batch_size * world_size)

    def __len__(self) -> int:
        return max(0, self.num_itrs - self.start_itr) * self.batch_size

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        slice_len = self.batch_size // self.minibatches  # one rank's part of a minibatch
        epoch, order = -1, None
        for itr in range(self.start_itr, self.num_itrs):
            for m in range(self.minibatches):
                start = ((itr * self.minibatches + m) * self.world_size + self.rank) * slice_len
                for pos in range(start, start + slice_len):
                    pos_epoch, offset = divmod(pos, self.num_samples)
                    if pos_epoch != epoch:
                        epoch = pos_epoch
                        order = epoch_order(self.num_samples, self.seed, epoch)
                    yield (int(order[offset]), pos) if self.draws else int(order[offset])


def _check_minibatches(batch_size: int, minibatches: int) -> None:
    """Refuse a batch that does not cut into equal minibatches."""
    if minibatches < 1 or batch_size % minibatches:
        raise ValueError(f'a batch of {batch_size} cannot be cut into {minibatches} equal '
                         f'minibatches')


class EpochSampler(Sampler[int]):
    """One epoch per pass, epoch k in the order epoch_order(seed, k); advances each pass.

    With world_size > 1 every rank takes its slice of each full global batch (the short
    global batch at the end is dropped so all ranks step together), or with `minibatches`
    > 1 its slice of each global minibatch, as MultiEpochSampler does. `set_epoch(k, b)`
    resumes at batch b of epoch k. With `draws` it yields (index, draw) pairs, the draw
    numbering epoch k's positions k * num_samples + i (see ImageDataset).
    """

    def __init__(self, num_samples: int, batch_size: int, *, seed: int = 0, rank: int = 0,
                 world_size: int = 1, shuffle: bool = True, minibatches: int = 1,
                 draws: bool = False):
        _check_minibatches(batch_size, minibatches)
        self.num_samples, self.batch_size, self.seed, self.shuffle = (num_samples, batch_size,
                                                                      seed, shuffle)
        self.rank, self.world_size, self.epoch, self.start_batch = rank, world_size, 0, 0
        self.minibatches, self.draws = minibatches, draws

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next pass be epoch `epoch`, from its batch `start_batch` (for resuming)."""
        self.epoch, self.start_batch = epoch, start_batch

    def _epoch_length(self) -> int:
        """Samples this rank reads per epoch (whole global batches only under DDP)."""
        if self.world_size == 1:
            return self.num_samples
        return self.num_samples // (self.batch_size * self.world_size) * self.batch_size

    def __len__(self) -> int:
        return max(self._epoch_length() - self.start_batch * self.batch_size, 0)

    def __iter__(self) -> Iterator[int] | Iterator[tuple[int, int]]:
        epoch, skip = self.epoch, self.start_batch * self.batch_size
        self.epoch, self.start_batch = self.epoch + 1, 0
        positions = np.arange(self.num_samples)
        if self.world_size > 1:
            n = self._epoch_length()
            slices = positions[:n * self.world_size].reshape(
                -1, self.minibatches, self.world_size, self.batch_size // self.minibatches)
            positions = slices[:, :, self.rank].reshape(-1)
        positions = positions[skip:]
        indices = epoch_order(self.num_samples, self.seed, epoch, self.shuffle)[positions]
        if self.draws:
            yield from zip(indices.tolist(), (epoch * self.num_samples + positions).tolist())
        else:
            yield from indices.tolist()
