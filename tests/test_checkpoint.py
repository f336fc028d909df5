"""Checkpoint files: atomic folders, the completeness marker, damage and mismatch detection."""

import json
from pathlib import Path

import pytest
import torch

from cluster.checkpoint import (
    MARKER,
    CheckpointError,
    check_compatible,
    latest_checkpoint,
    list_checkpoints,
    load_file,
    prune_checkpoints,
    read_marker,
    save_checkpoint,
    step_dir,
)

CONFIG = {"model.name": "mlp", "optim.lr": 0.05}


def save(root: Path, step: int, **extra) -> Path:
    return save_checkpoint(root, step, rank=0, world_size=1, shared={"w": torch.arange(4.0), "step": step},
                           per_rank={"rng": torch.get_rng_state()}, meta={"config": CONFIG}, barrier=lambda: None,
                           **extra)


def test_saved_checkpoint_round_trips_with_weights_only(tmp_path):
    folder = save(tmp_path, 5)
    assert folder == step_dir(tmp_path, 5) and (folder / MARKER).is_file()
    assert read_marker(folder)["config"] == CONFIG
    assert torch.equal(load_file(folder / "state.pt")["w"], torch.arange(4.0))
    assert not list(tmp_path.glob("*.partial")) and not list(folder.glob("*.tmp"))


def test_newest_complete_checkpoint_wins_and_partial_ones_are_ignored(tmp_path):
    save(tmp_path, 10)
    save(tmp_path, 20)
    (tmp_path / "step-000030.partial").mkdir()  # a writer killed mid-way
    unmarked = step_dir(tmp_path, 40)  # a folder without its marker
    unmarked.mkdir()
    (unmarked / "state.pt").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 20)


def test_stale_partial_folder_is_replaced_by_the_next_save(tmp_path):
    stale = tmp_path / "step-000010.partial"
    stale.mkdir(parents=True)
    (stale / "junk").write_text("left by a killed writer")
    folder = save(tmp_path, 10)
    assert not stale.exists() and not (folder / "junk").exists()


def test_truncated_file_is_refused_by_its_size(tmp_path):
    folder = save(tmp_path, 10)
    data = (folder / "state.pt").read_bytes()
    (folder / "state.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt: state.pt is \d+ bytes, expected \d+ bytes; move .* out of the way"):
        read_marker(folder)


def test_garbage_of_the_right_size_is_refused_when_loaded(tmp_path):
    folder = save(tmp_path, 10)
    size = (folder / "state.pt").stat().st_size
    (folder / "state.pt").write_bytes(b"\0" * size)
    read_marker(folder)  # sizes match...
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_file(folder / "state.pt")  # ...but it is no checkpoint


def test_pickled_code_is_refused(tmp_path):
    evil = tmp_path / "evil.pt"
    torch.save({"payload": Path("/tmp")}, evil)  # an arbitrary class: weights_only must refuse it
    with pytest.raises(CheckpointError, match="cannot be loaded"):
        load_file(evil)


def test_unreadable_marker_is_refused(tmp_path):
    folder = save(tmp_path, 10)
    (folder / MARKER).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable COMPLETE marker"):
        read_marker(folder)


def test_incompatible_config_names_each_change(tmp_path):
    folder = save(tmp_path, 10)
    other = {**CONFIG, "optim.lr": 0.1}
    with pytest.raises(CheckpointError, match=r"optim.lr: 0.05 -> 0.1\); run with the same settings"):
        check_compatible(read_marker(folder)["config"], other, folder=folder)
    check_compatible(read_marker(folder)["config"], dict(CONFIG), folder=folder)


def test_prune_keeps_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step)
    prune_checkpoints(tmp_path, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3, 4]


def test_marker_records_every_file_size(tmp_path):
    folder = save(tmp_path, 3)
    sizes = json.loads((folder / MARKER).read_text())["files"]
    assert sizes == {p.name: p.stat().st_size for p in folder.iterdir() if p.name != MARKER}
