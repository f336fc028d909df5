"""The built-in datasets, as targets a config names like any user's (``conf/data/*.yaml``: ``_target_:
jobs.data.synthetic``), read through ``torchvision.datasets`` from their on-disk formats; and what the trainer
learns from any dataset (``describe``), with its validation data: a target that takes ``split`` makes its own
(``split="val"``: MNIST's and CIFAR-10's test sets), from any other ``data.val_fraction`` is held out.

torch and torchvision are imported inside the functions that build a dataset: checking a dataset's settings
and files (``check_data``) runs on a login node for every member of a sweep, which must not pay 2-4 s for
importing torch.
"""

import dataclasses
import inspect
from pathlib import Path
from typing import Any

from cluster.errors import require_positive
from jobs.settings import config_keys
from jobs.targets import Target, settings_of

# torchvision's layouts: the folder each dataset reads, and the files it needs there.
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


@dataclasses.dataclass(frozen=True)
class GeneratedSettings:
    num_samples: int = 8192  # number of samples
    image_shape: tuple[int, ...] = (1, 28, 28)  # shape of one sample (channels, height, width)
    num_classes: int = 10  # number of labels
    seed: int = 1234  # seed of the data itself, separate from train.seed

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_shape", tuple(self.image_shape))  # a list, from a config
        with config_keys("data"):
            require_positive(num_samples=self.num_samples, num_classes=self.num_classes)
        if len(self.image_shape) != 3 or min(self.image_shape) <= 0:
            raise ValueError(f"data.image_shape must be [channels, height, width], got {list(self.image_shape)}")


@dataclasses.dataclass(frozen=True)
class SyntheticSettings(GeneratedSettings):
    noise: float = 15.0  # noise around each class prototype, relative to it (higher is harder)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.noise < 0:
            raise ValueError("data.noise must not be negative")


@dataclasses.dataclass(frozen=True)
class FakeSettings(GeneratedSettings):
    """torchvision's FakeData: random images and labels (for throughput, not for learning)."""

    num_samples: int = 4096  # number of samples
    image_shape: tuple[int, ...] = (3, 32, 32)  # shape of one sample (channels, height, width)
    seed: int = 0  # FakeData's random_offset


@dataclasses.dataclass(frozen=True)
class FilesSettings:
    root: str = "data"  # folder holding torchvision's on-disk layout
    download: bool = False  # fetch missing files from the internet (off: fail and say what is missing)


@dataclasses.dataclass(frozen=True)
class CIFAR10Settings(FilesSettings):
    verify_md5: bool = True  # check torchvision's checksums (off for subsets or repacked copies)


@dataclasses.dataclass(frozen=True)
class TextSettings:
    path: str = ""  # the text file (any bytes will do): each byte is a token, from a vocabulary of 256
    seq_len: int = 64  # tokens a sample holds; its targets are the same window one byte later

    def __post_init__(self) -> None:
        if not self.path:
            raise ValueError("data.path is not set; name the text file to train on: data=text data.path=FILE")
        with config_keys("data"):
            require_positive(seq_len=self.seq_len)


# Samples in the training split of the datasets whose size is not a setting.
TRAIN_SAMPLES = {"mnist": 60_000, "cifar10": 50_000}


def synthetic(**settings: Any) -> Any:
    """Built in, nothing to download: noisy copies of one random prototype per class (MNIST's shape by default)."""
    import torch
    from torch.utils.data import TensorDataset

    cfg = SyntheticSettings(**settings)
    generator = torch.Generator().manual_seed(cfg.seed)
    prototypes = torch.randn((cfg.num_classes, *cfg.image_shape), generator=generator)
    labels = torch.randint(cfg.num_classes, (cfg.num_samples,), generator=generator)
    noise = torch.randn((cfg.num_samples, *cfg.image_shape), generator=generator)
    # Scaled back to unit variance, so that a harder task does not mean larger inputs.
    samples = (prototypes[labels] + cfg.noise * noise) / (1 + cfg.noise**2) ** 0.5
    dataset = TensorDataset(samples, labels)
    dataset.num_classes = cfg.num_classes  # type: ignore[attr-defined]
    return dataset


def fake(**settings: Any) -> Any:
    """torchvision.datasets.FakeData: random images and labels."""
    import torchvision
    from torchvision import transforms

    cfg = FakeSettings(**settings)
    return torchvision.datasets.FakeData(size=cfg.num_samples, image_size=cfg.image_shape, num_classes=cfg.num_classes,
                                         transform=transforms.ToTensor(), random_offset=cfg.seed)


def mnist(split: str = "train", **settings: Any) -> Any:
    """MNIST through torchvision.datasets.MNIST, from <root>/MNIST/raw: the training split, or (``split="val"``)
    the test split, as validation data."""
    import torchvision
    from torchvision import transforms

    cfg = FilesSettings(**settings)
    _check_files("mnist", cfg)
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
    return torchvision.datasets.MNIST(cfg.root, train=_is_train(split), download=cfg.download, transform=to_tensor)


def cifar10(split: str = "train", **settings: Any) -> Any:
    """CIFAR-10 through torchvision.datasets.CIFAR10, from <root>/cifar-10-batches-py: the training split, or
    (``split="val"``) the test split, as validation data."""
    from torchvision import transforms

    cfg = CIFAR10Settings(**settings)
    _check_files("cifar10", cfg)
    to_tensor = transforms.Compose([
        transforms.ToTensor(), transforms.Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    ])
    return _cifar10_class(cfg.verify_md5)(cfg.root, train=_is_train(split), download=cfg.download,
                                          transform=to_tensor)


def _is_train(split: str) -> bool:
    if split not in ("train", "val"):
        raise ValueError(f"split={split!r}: the trainer asks for 'train' or 'val'")
    return split == "train"


def text(**settings: Any) -> Any:
    """A text file as byte tokens, memory-mapped, cut into windows of ``seq_len`` + 1 bytes that do not overlap:
    (inputs, the next byte of each) pairs, for ``model=gpt``."""
    from jobs.text import ByteWindows

    cfg = TextSettings(**settings)
    _check_text(cfg)
    return ByteWindows(cfg.path, cfg.seq_len)


def _check_text(cfg: TextSettings) -> None:
    path = Path(cfg.path)
    if not path.is_file():
        raise FileNotFoundError(f"data.path={cfg.path}: no such file ({path.resolve()}); name a text file to train on")
    if path.stat().st_size <= cfg.seq_len:
        raise ValueError(f"data.path={cfg.path} holds {path.stat().st_size} bytes, not one window of data.seq_len="
                         f"{cfg.seq_len} + 1; use a longer file or a smaller data.seq_len")


synthetic.settings = SyntheticSettings  # type: ignore[attr-defined]
text.settings = TextSettings  # type: ignore[attr-defined]
fake.settings = FakeSettings  # type: ignore[attr-defined]
mnist.settings = FilesSettings  # type: ignore[attr-defined]
cifar10.settings = CIFAR10Settings  # type: ignore[attr-defined]
BUILT_IN = {"jobs.data.synthetic", "jobs.data.fake", "jobs.data.mnist", "jobs.data.cifar10", "jobs.data.text"}


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


def expected_files(name: str, cfg: FilesSettings) -> tuple[Path, tuple[str, ...]]:
    """The folder a file-backed dataset reads and the files it needs there."""
    if name == "mnist":
        return Path(cfg.root) / "MNIST" / "raw", MNIST_FILES
    return Path(cfg.root) / "cifar-10-batches-py", CIFAR10_FILES


def _check_files(name: str, cfg: FilesSettings) -> None:
    """Fail before any rank starts when a dataset's files are not on disk (and not to be downloaded)."""
    folder, files = expected_files(name, cfg)
    missing = [file for file in files if not (folder / file).is_file()]
    if missing and not cfg.download:
        raise FileNotFoundError(
            f"{name} files missing in {folder.resolve()}: {', '.join(missing)}; put torchvision's "
            f"{name} files there, point data.root at the folder that holds {folder.relative_to(cfg.root)}/, "
            "or set data.download=true"
        )


def check_data(target: Target) -> None:
    """On the login node: the target and its settings, and a built-in file dataset's files."""
    target.check()
    if target.path in ("jobs.data.mnist", "jobs.data.cifar10"):
        _check_files(target.name, settings_of(target, target.load().settings))  # type: ignore[attr-defined]
    if target.path == "jobs.data.text":
        _check_text(settings_of(target, TextSettings))


def dataset_size(target: Target) -> int | None:
    """Samples in a built-in dataset's training split, known without reading it (None: a user's dataset)."""
    if target.path not in BUILT_IN:
        return None
    if target.name in TRAIN_SAMPLES:
        return TRAIN_SAMPLES[target.name]
    if target.path == "jobs.data.text":
        cfg = settings_of(target, TextSettings)
        return (Path(cfg.path).stat().st_size - 1) // cfg.seq_len
    return int(settings_of(target, target.load().settings).num_samples)  # type: ignore[attr-defined]


def has_own_split(target: Target) -> bool:
    """Whether a data target makes its own validation data: it takes ``split`` ("train" or "val")."""
    try:
        return "split" in inspect.signature(target.load()).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def held_out_count(size: int, fraction: float) -> int:
    """How many of ``size`` samples ``data.val_fraction`` holds out (at least one when it is set)."""
    return max(1, round(size * fraction)) if fraction else 0


def held_out(size: int, fraction: float) -> tuple[list[int], list[int]]:
    """The indices trained on and those held out for validation, both in order: chosen by a fixed shuffle (seed 0),
    so that runs with any ``train.seed`` (a sweep's members) train and compare on the same split."""
    import torch

    order = torch.randperm(size, generator=torch.Generator().manual_seed(0)).tolist()
    count = held_out_count(size, fraction)
    return sorted(order[count:]), sorted(order[:count])


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    dataset: Any  # a map-style torch Dataset of (input, target) pairs: what is trained on
    sample_shape: tuple[int, ...]  # the shape of one input
    num_classes: int | None  # from the dataset's num_classes (or classes) attribute, when it has one
    example: Any = None  # the first item's input, as the dataset gives it
    validation: Any = None  # the validation dataset (its own split, or what data.val_fraction held out), or None


def describe(target: Target, *, val_fraction: float = 0.0) -> DatasetInfo:
    """Build the dataset the config names, and its validation data, and check that they are ones the trainer can
    use."""
    from torch.utils.data import Subset

    own = has_own_split(target)
    dataset = _checked(target, target.call(split="train") if own else target.call())
    validation = _checked(target, target.call(split="val")) if own else None
    classes = getattr(dataset, "num_classes", None) or len(getattr(dataset, "classes", ()) or ()) or None
    if val_fraction and validation is None:
        trained, kept = held_out(len(dataset), val_fraction)
        if not trained:
            raise ValueError(f"data.val_fraction={val_fraction} holds out all {len(dataset)} samples; lower it")
        dataset, validation = Subset(dataset, trained), Subset(dataset, kept)
    example = _first_input(target, dataset)  # of what is trained on: a read may draw from the generators
    if validation is not None:
        _first_input(target, validation)
    return DatasetInfo(dataset, tuple(example.shape), classes, example, validation)


def _checked(target: Target, dataset: Any) -> Any:
    """``dataset``, when it is a non-empty map-style dataset; else why not."""
    if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
        raise ValueError(f"data._target_={target.path} returned a {type(dataset).__name__}, not a map-style dataset "
                         "(with __getitem__ and __len__); return a torch.utils.data.Dataset of (input, target) pairs")
    if len(dataset) == 0:
        raise ValueError(f"data._target_={target.path} returned an empty dataset")
    return dataset


def _first_input(target: Target, dataset: Any) -> Any:
    """The first item's input, when the items are (input, target) pairs; else why not."""
    item = dataset[0]
    if not isinstance(item, (tuple, list)) or len(item) != 2 or not hasattr(item[0], "shape"):
        raise ValueError(f"data._target_={target.path}: its items are {type(item).__name__}s, not (input, target) "
                         "pairs of a tensor and its label; make __getitem__ return (input, target)")
    return item[0]
