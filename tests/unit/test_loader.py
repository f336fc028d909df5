"""cluster.ResumableLoader and cluster.EvalLoader without a process group (replicas given): which samples a step
(an evaluation) reads, their random draws, and the position a checkpoint holds."""

import random

import numpy
import pytest
import torch
from torch.utils.data import Dataset

from cluster.runtime.loader import EvalLoader, ResumableLoader


class Drawing(Dataset):
    """Item i: (i + a draw from each global generator, i); the draw is the augmentation."""

    def __len__(self) -> int:
        return 50

    def __getitem__(self, index: int):
        return torch.tensor([index + torch.rand(()).item(), index + random.random()]), index


def steps(replicas: int, count: int, **options) -> list[dict[int, torch.Tensor]]:
    """The samples of each step over all replicas, by index, with what each read."""
    def epochs(loader: ResumableLoader):
        while True:
            yield from loader  # one epoch, then the next

    loaders = [epochs(ResumableLoader(Drawing(), 12 // replicas, seed=3, replicas=replicas, replica=r, **options))
               for r in range(replicas)]
    out = []
    for _ in range(count):
        step = {}
        for loader in loaders:
            values, indices = next(loader)
            step.update({int(i): v for i, v in zip(indices, values, strict=True)})
        out.append(step)
    return out


def test_a_step_reads_the_same_samples_with_the_same_draws_on_any_number_of_replicas_or_workers():
    one = steps(1, 6)  # 50 samples, 12 a step: 4 steps an epoch, the last 2 samples left out
    assert all(len(step) == 12 for step in one) and len(set().union(*one[:4])) == 48
    for other in (steps(2, 6), steps(3, 6), steps(2, 6, num_workers=2)):
        assert [sorted(s) for s in other] == [sorted(s) for s in one]
        assert all(torch.equal(other[n][i], one[n][i]) for n in range(6) for i in one[n])


def test_reading_leaves_the_ranks_own_generators_where_they_were():
    torch.manual_seed(5)
    random.seed(5)
    expected = (torch.rand(()), random.random())
    torch.manual_seed(5)
    random.seed(5)
    next(iter(ResumableLoader(Drawing(), 4, replicas=1, replica=0)))
    assert (torch.rand(()), random.random()) == expected  # dropout draws on as if nothing was read


def test_the_position_after_an_epochs_last_batch_is_the_next_epochs_start():
    loader = ResumableLoader(Drawing(), 10, replicas=1, replica=0)
    batches = iter(loader)
    for _ in range(len(loader)):
        next(batches)
    assert loader.state_dict() == {"epoch": 1, "batch": 0, "global_batch_size": 10}
    resumed = ResumableLoader(Drawing(), 5, replicas=2, replica=1)  # another number of replicas, the same steps
    resumed.load_state_dict(loader.state_dict())
    assert (resumed.epoch, resumed.batch) == (1, 0)


class Fixed(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int):
        return torch.full((2,), float(index)), index


class NumpyDrawing(Fixed):
    def __getitem__(self, index: int):
        return torch.full((2,), index + float(numpy.random.rand())), index


def test_only_a_dataset_that_draws_is_read_with_seeded_generators():
    """Seeding costs ~9 us a sample: a dataset without random augmentation is read as it is."""
    assert not ResumableLoader(Fixed(), 2, replicas=1, replica=0).seeded
    assert ResumableLoader(Drawing(), 2, replicas=1, replica=0).seeded
    assert ResumableLoader(NumpyDrawing(), 2, replicas=1, replica=0).seeded


class Sized(Drawing):
    def __init__(self, size: int):
        self.size, self.reads = size, []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        self.reads.append(index)
        return super().__getitem__(index)


@pytest.mark.parametrize("size", [1, 7, 50])
def test_an_evaluation_reads_each_sample_once_over_one_to_four_replicas_in_as_many_batches(size):
    """Sizes: fewer samples than replicas, uneven shares with a padded last batch, a replica with a batch less."""
    whole = {}
    for replicas in (1, 2, 3, 4):
        seen, batch_counts = {}, set()
        for replica in range(replicas):
            dataset = Sized(size)
            loader = EvalLoader(dataset, 4, seed=3, replicas=replicas, replica=replica)
            dataset.reads.clear()  # the loader's look at the first items: does the dataset draw at random?
            batches = list(loader)
            if size >= replicas:  # the padding repeats rows already read (a share of none reads one, to pad with)
                assert sorted(dataset.reads) == loader.share, f"replica {replica} of {replicas} read {dataset.reads}"
            batch_counts.add(len(batches))
            for values, indices, mask in batches:
                assert len(indices) == len(mask) == 4  # full batches: the padding is masked out
                for value, index in zip(values[mask], indices[mask], strict=True):
                    assert int(index) not in seen, f"sample {int(index)} read twice over {replicas} replicas"
                    seen[int(index)] = value
        assert sorted(seen) == list(range(size)), f"{replicas} replicas"
        assert len(batch_counts) == 1, f"{replicas} replicas ran {batch_counts} batches: a collective would hang"
        for index, value in seen.items():  # the same augmentation whichever replica reads the sample
            torch.testing.assert_close(value, whole.setdefault(index, value), rtol=0, atol=0)


def test_an_evaluation_leaves_the_training_generators_as_they_were():
    torch.manual_seed(5)
    random.seed(5)
    numpy.random.seed(5)
    expected = (torch.rand(3), random.random(), numpy.random.rand())
    torch.manual_seed(5)
    random.seed(5)
    numpy.random.seed(5)
    list(EvalLoader(Sized(10), 4, replicas=2, replica=1))
    assert torch.equal(torch.rand(3), expected[0]) and random.random() == expected[1]
    assert numpy.random.rand() == expected[2]
