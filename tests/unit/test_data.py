"""Datasets read by torchvision from small files written here in the real on-disk formats."""

import pickle
import re
import struct

import numpy as np
import pytest
import torch

from jobs.data import CIFAR10_FILES, MNIST_FILES, check_data, describe, held_out
from jobs.targets import Target


def data(name: str, **kwargs) -> Target:
    """What ``data=NAME data.KEY=VALUE...`` names."""
    return Target("data", f"jobs.data.{name}", kwargs)


def write_idx(path, array: np.ndarray) -> None:
    """MNIST's IDX format: magic (0, 0, dtype 0x08 = ubyte, ndim), big-endian sizes, raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


@pytest.fixture
def mnist_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("t10k", 4)):
        write_idx(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (count, 28, 28)))
        write_idx(raw / f"{split}-labels-idx1-ubyte", np.arange(count) % 10)
    return tmp_path


@pytest.fixture
def cifar_root(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in CIFAR10_FILES[:-1]:  # python pickles of {"data": N x 3072 uint8, "labels": [...]}
        batch = {"data": rng.integers(0, 256, (5, 3072), dtype=np.uint8), "labels": [1, 2, 3, 4, 5]}
        (folder / name).write_bytes(pickle.dumps(batch))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": [f"c{i}" for i in range(10)]}))
    return tmp_path


def test_mnist_reads_idx_files(mnist_root):
    info = describe(data("mnist", root=str(mnist_root)))
    image, label = info.dataset[3]
    assert len(info.dataset) == 12 and image.shape == (1, 28, 28) and label == 3
    assert info.sample_shape == (1, 28, 28) and info.num_classes == 10


def test_cifar10_reads_python_batches(cifar_root):
    info = describe(data("cifar10", root=str(cifar_root), verify_md5=False))
    image, label = info.dataset[6]
    assert len(info.dataset) == 25 and image.shape == (3, 32, 32) and label == 2


def test_cifar10_checksums_are_checked_by_default(cifar_root):
    with pytest.raises(RuntimeError, match="corrupted"):
        describe(data("cifar10", root=str(cifar_root)))


@pytest.mark.parametrize("name, files", [("mnist", MNIST_FILES), ("cifar10", CIFAR10_FILES)])
def test_missing_files_error_names_the_folder_and_the_files(tmp_path, name, files):
    with pytest.raises(FileNotFoundError) as caught:
        check_data(data(name, root=str(tmp_path)))
    message = str(caught.value)
    assert str(tmp_path) in message and all(f in message for f in files) and "data.download=true" in message


def test_synthetic_is_deterministic_and_balanced_enough():
    a = describe(data("synthetic", num_samples=1000))
    b = describe(data("synthetic", num_samples=1000))
    assert torch.equal(a.dataset.tensors[0], b.dataset.tensors[0])
    counts = torch.bincount(a.dataset.tensors[1], minlength=10)
    assert counts.min() > 50
    assert abs(a.dataset.tensors[0].std().item() - 1.0) < 0.05  # unit variance, whatever the noise


def test_fake_data_has_the_configured_shape():
    info = describe(data("fake", num_samples=3, image_shape=[3, 8, 8]))
    assert info.dataset[0][0].shape == (3, 8, 8) and len(info.dataset) == 3


def test_mnist_and_cifar10_are_validated_on_their_test_split(mnist_root, cifar_root):
    mnist = describe(data("mnist", root=str(mnist_root)))
    assert len(mnist.dataset) == 12 and len(mnist.validation) == 4  # t10k-*: 4 samples, labels 0-3
    assert [int(mnist.validation[i][1]) for i in range(4)] == [0, 1, 2, 3]
    cifar = describe(data("cifar10", root=str(cifar_root), verify_md5=False))
    assert len(cifar.dataset) == 25 and len(cifar.validation) == 5  # test_batch


def test_val_fraction_holds_out_the_same_samples_whatever_the_seed():
    held = []
    for seed in (0, 1):
        torch.manual_seed(seed)  # the trainer seeds its generators with train.seed before it builds the data
        info = describe(data("synthetic", num_samples=1000), val_fraction=0.1)
        assert len(info.validation) == 100 and len(info.dataset) == 900
        assert not set(info.validation.indices) & set(info.dataset.indices)
        held.append(info.validation.indices)
    assert held[0] == held[1] == held_out(1000, 0.1)[1]
    assert held_out(10, 0.01)[1] and len(held_out(10, 0.01)[1]) == 1  # set: at least one sample


def test_text_is_bytes_in_windows_whose_targets_are_the_next_byte(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(bytes(range(200)) + "é".encode())  # 202 bytes: 20 windows of 10 (+1), the rest left out
    info = describe(data("text", path=str(path), seq_len=10))
    assert len(info.dataset) == 20 and info.num_classes == 256 and info.sample_shape == (10,)
    inputs, targets = info.dataset[3]
    assert inputs.tolist() == list(range(30, 40)) and targets.tolist() == list(range(31, 41))
    assert inputs.dtype == torch.int64
    again = pickle.loads(pickle.dumps(info.dataset))  # a DataLoader worker maps the file itself
    assert again._bytes is None and torch.equal(again[19][1], info.dataset[19][1])
    assert info.dataset[19][1][-1] == 0xC3  # the last window ends at byte 200 (é's first); byte 201 fills none


@pytest.mark.parametrize("settings, message", [
    ({}, "data.path is not set; name the text file to train on: data=text data.path=FILE"),
    ({"path": "/nonexistent.txt"}, "data.path=/nonexistent.txt: no such file"),
    ({"path": "SHORT", "seq_len": 64}, "holds 5 bytes, not one window of data.seq_len=64 + 1"),
])
def test_text_that_cannot_be_trained_on_is_refused_on_the_login_node(tmp_path, settings, message):
    (tmp_path / "short.txt").write_bytes(b"hello")
    settings = {k: str(tmp_path / "short.txt") if v == "SHORT" else v for k, v in settings.items()}
    with pytest.raises((ValueError, FileNotFoundError), match=re.escape(message)):
        check_data(data("text", **settings))
