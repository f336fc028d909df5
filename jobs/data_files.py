"""What a file-backed dataset needs on disk, checked without importing torch (a sweep checks every member)."""

from pathlib import Path

from jobs.config import DataConfig

# torchvision's layouts: the folder each dataset reads, and the files it needs there.
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR10_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")


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
