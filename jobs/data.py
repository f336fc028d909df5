"""Datasets a config can name, read through ``torchvision.datasets`` from their on-disk formats.

torch and torchvision are imported inside the functions that build a dataset: checking that a
dataset's files are there (``check_data_available``) runs on a login node for every member of a
sweep, which must not pay 2-4 s for importing torch.
"""

import dataclasses
from pathlib import Path
from typing import Any

from jobs.settings import DataConfig

# Samples in the training split of the datasets whose size is not a setting.
TRAIN_SAMPLES = {"mnist": 60_000, "cifar10": 50_000}
# torchvision's layouts: the folder each dataset reads, and the files it needs there.
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    dataset: Any  # a map-style torch Dataset of (input, target) pairs
    sample_shape: tuple[int, ...]  # (channels, height, width) of one sample
    num_classes: int


def dataset_size(cfg: DataConfig) -> int:
    """Samples in the training split ``cfg`` names, known without reading it."""
    return TRAIN_SAMPLES.get(cfg.name, cfg.num_samples)


def expected_files(cfg: DataConfig) -> tuple[Path, tuple[str, ...]]:
    """The folder a file-backed dataset reads and the files it needs there."""
    if cfg.name == "mnist":
        return Path(cfg.root) / "MNIST" / "raw", MNIST_FILES
    if cfg.name == "cifar10":
        return Path(cfg.root) / "cifar-10-batches-py", CIFAR10_FILES
    return Path(cfg.root), ()


def check_data_available(cfg: DataConfig) -> None:
    """Fail before any rank starts when a dataset's files are not on disk (and not to be downloaded)."""
    folder, files = expected_files(cfg)
    missing = [name for name in files if not (folder / name).is_file()]
    if missing and not cfg.download:
        raise FileNotFoundError(
            f"{cfg.name} files missing in {folder.resolve()}: {', '.join(missing)}; put torchvision's "
            f"{cfg.name} files there, point data.root at the folder that holds {folder.relative_to(cfg.root)}/, "
            "or set data.download=true"
        )


def _synthetic(cfg: DataConfig) -> Any:
    """Noisy copies of one random prototype per class: learnable, yet not trivially so."""
    import torch
    from torch.utils.data import TensorDataset

    generator = torch.Generator().manual_seed(cfg.seed)
    prototypes = torch.randn((cfg.num_classes, *cfg.image_shape), generator=generator)
    labels = torch.randint(cfg.num_classes, (cfg.num_samples,), generator=generator)
    noise = torch.randn((cfg.num_samples, *cfg.image_shape), generator=generator)
    # Scaled back to unit variance, so that a harder task does not mean larger inputs.
    samples = (prototypes[labels] + cfg.noise * noise) / (1 + cfg.noise**2) ** 0.5
    return TensorDataset(samples, labels)


def _cifar10_class(verify_md5: bool) -> Any:
    import torchvision

    if verify_md5:
        return torchvision.datasets.CIFAR10

    class CIFAR10WithoutChecksums(torchvision.datasets.CIFAR10):
        """CIFAR-10 whose files are not compared with the published MD5s (torchvision skips a None md5)."""

        train_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.train_list]
        test_list = [[name, None] for name, _ in torchvision.datasets.CIFAR10.test_list]
        meta = {**torchvision.datasets.CIFAR10.meta, "md5": None}

    return CIFAR10WithoutChecksums


def build_dataset(cfg: DataConfig) -> DatasetInfo:
    """The training split of the dataset ``cfg`` names."""
    if cfg.name == "synthetic":
        return DatasetInfo(_synthetic(cfg), cfg.image_shape, cfg.num_classes)
    import torchvision
    from torchvision import transforms

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
    to_tensor = transforms.Compose([
        transforms.ToTensor(), transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ])
    cifar = _cifar10_class(cfg.verify_md5)(cfg.root, train=True, download=cfg.download, transform=to_tensor)
    return DatasetInfo(cifar, (3, 32, 32), 10)
