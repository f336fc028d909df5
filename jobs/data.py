"""Datasets a config can name, read through ``torchvision.datasets`` from their on-disk formats."""

import dataclasses

import torch
import torchvision
from torch.utils.data import Dataset, TensorDataset
from torchvision import transforms

from jobs.config import DataConfig
from jobs.data_files import check_data_available


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    dataset: Dataset
    sample_shape: tuple[int, ...]  # (channels, height, width) of one sample
    num_classes: int


class _CIFAR10WithoutChecksums(torchvision.datasets.CIFAR10):
    """CIFAR-10 whose files are not compared with the published MD5s (torchvision skips a None md5)."""

    train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
    test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
    meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}


def _synthetic(cfg: DataConfig) -> TensorDataset:
    """Noisy copies of one random prototype per class: learnable, yet not trivially so."""
    generator = torch.Generator().manual_seed(cfg.seed)
    prototypes = torch.randn((cfg.num_classes, *cfg.image_shape), generator=generator)
    labels = torch.randint(cfg.num_classes, (cfg.num_samples,), generator=generator)
    noise = torch.randn((cfg.num_samples, *cfg.image_shape), generator=generator)
    # Scaled back to unit variance, so that a harder task does not mean larger inputs.
    samples = (prototypes[labels] + cfg.noise * noise) / (1 + cfg.noise**2) ** 0.5
    return TensorDataset(samples, labels)


def build_dataset(cfg: DataConfig) -> DatasetInfo:
    """The training split of the dataset ``cfg`` names."""
    if cfg.name == "synthetic":
        return DatasetInfo(_synthetic(cfg), cfg.image_shape, cfg.num_classes)
    if cfg.name == "fake":
        fake = torchvision.datasets.FakeData(
            size=cfg.num_samples, image_size=cfg.image_shape, num_classes=cfg.num_classes,
            transform=transforms.ToTensor(), random_offset=cfg.seed,
        )
        return DatasetInfo(fake, cfg.image_shape, cfg.num_classes)
    check_data_available(cfg)
    if cfg.name == "mnist":
        to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        mnist = torchvision.datasets.MNIST(cfg.root, train=True, download=cfg.download, transform=to_tensor)
        return DatasetInfo(mnist, (1, 28, 28), 10)
    cifar_class = torchvision.datasets.CIFAR10 if cfg.verify_md5 else _CIFAR10WithoutChecksums
    to_tensor = transforms.Compose([
        transforms.ToTensor(), transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ])
    cifar = cifar_class(cfg.root, train=True, download=cfg.download, transform=to_tensor)
    return DatasetInfo(cifar, (3, 32, 32), 10)
