"""A map-style dataset of (input, target) pairs, with a random augmentation drawn as each item is read."""

import torch
from torch.utils.data import Dataset


class Shapes(Dataset):
    def __init__(self, size: int, dim: int, classes: int, seed: int, jitter: float, spread: float):
        generator = torch.Generator().manual_seed(seed)
        centers = torch.randn(classes, dim, generator=generator)
        self.labels = torch.randint(classes, (size,), generator=generator)
        self.inputs = centers[self.labels] + spread * torch.randn(size, dim, generator=generator)
        self.jitter = jitter
        self.num_classes = classes  # read by the trainer to size a model that takes num_classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs[index]
        if self.jitter:  # augmentation: the rank's generator, saved in checkpoints, so a resume is exact
            x = x + self.jitter * torch.randn_like(x)
        return x, self.labels[index]


def make_dataset(size: int = 2048, dim: int = 32, classes: int = 4, seed: int = 0, jitter: float = 0.1,
                 spread: float = 2.5) -> Shapes:
    """``spread``: the noise around each class's center (higher is harder)."""
    return Shapes(size, dim, classes, seed, jitter, spread)
