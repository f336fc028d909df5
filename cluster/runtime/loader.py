"""Batches of a map-style dataset for one data-parallel replica, epoch after epoch, resumable at any batch.

The position is counted in batches handed to the loop (not drawn by the loader, whose workers fetch
ahead), so a checkpoint taken at a step boundary says exactly which batch comes next. Random augmentation
resumes exactly in the loop's process (``num_workers=0``: its generators are in the checkpoint); worker
processes reseed each epoch, so a resume in mid-epoch gives their samples other random draws.
"""

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler


class _SkipFirst(Sampler[int]):
    """The first ``skip`` indices of an epoch left out, without loading the samples it skips."""

    def __init__(self, sampler: DistributedSampler, skip: int):
        self.sampler, self.skip = sampler, skip

    def __iter__(self) -> Iterator[int]:
        indices = iter(self.sampler)
        for _ in range(self.skip):
            next(indices)
        return indices

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


class ResumableLoader:
    """``DistributedSampler`` + ``DataLoader`` in one, with a position a checkpoint can hold.

    Iterating gives the rest of the current epoch (whole batches); at its end the next epoch begins, with
    a new shuffle (``seed + epoch``, as ``DistributedSampler.set_epoch``). ``replicas``/``replica``
    default to the process group's size and rank; ranks of one pipeline share a replica. Put it in the
    state ``Job.save`` saves, or call ``seek(step)`` when the step says where the data is.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 replicas: int | None = None, replica: int | None = None, **loader_options: Any):
        self.dataset, self.batch_size, self.loader_options = dataset, batch_size, loader_options
        replicas = dist.get_world_size() if replicas is None else replicas
        replica = dist.get_rank() if replica is None else replica
        self.sampler: DistributedSampler = DistributedSampler(dataset, num_replicas=replicas, rank=replica,
                                                              shuffle=shuffle, seed=seed, drop_last=True)
        if len(self) == 0:
            raise ValueError(f"the dataset has {len(dataset)} samples (len(dataset)), fewer than one batch of "  # type: ignore[arg-type]
                             f"{batch_size} for each of {replicas} replicas; use a smaller batch or more data")
        self.epoch, self.batch = 0, 0  # where the next batch comes from

    def __len__(self) -> int:
        """Batches in one epoch."""
        return len(self.sampler) // self.batch_size

    def __iter__(self) -> Iterator[Any]:
        self.sampler.set_epoch(self.epoch)
        # A generator of its own: a DataLoader draws its workers' base seed from it as each epoch's iterator starts,
        # and drawing from the global one would put a resumed run (which starts one mid-epoch) off by one draw.
        generator = torch.Generator().manual_seed(self.sampler.seed + self.epoch)
        loader = DataLoader(self.dataset, batch_size=self.batch_size, drop_last=True, generator=generator,
                            sampler=_SkipFirst(self.sampler, self.batch * self.batch_size), **self.loader_options)
        for batch in loader:
            self.batch += 1
            yield batch
        self.epoch, self.batch = self.epoch + 1, 0

    def seek(self, batches: int) -> None:
        """Go to the position after ``batches`` batches from the start of epoch 0."""
        self.epoch, self.batch = divmod(batches, len(self))

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
