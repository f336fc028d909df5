"""Checkpoints in the DCP layout: atomic folders, the completeness marker, safe loading, async writes."""

import json
import pickle
import resource
import threading
from pathlib import Path

import pytest
import torch

from cluster.environment import SINGLE_PROCESS
from cluster.errors import CheckpointError
from cluster.runtime.checkpoint import (
    MARKER,
    SafeReader,
    check_compatible,
    latest_checkpoint,
    list_checkpoints,
    partial_dir,
    read_marker,
    read_state,
    read_whole,
    remove_partials,
    step_dir,
)
from cluster.runtime.checkpoint_writer import CheckpointWriter, stage
from cluster.runtime.process_group import process_group
from jobs.user_errors import describe

CONFIG = {"model.name": "mlp", "optim.lr": 0.05}


@pytest.fixture(scope="module")
def group():
    with process_group(SINGLE_PROCESS, backend="gloo", timeout_s=30):
        yield


def state(step: int) -> dict:
    return {"w": torch.arange(4.0) * step, "progress": {"step": step, "loss": 0.5},
            "rng": {"python": (3, (1, 2), None)}}


def save(root: Path, step: int, *, background: bool = False, keep: int = 10) -> CheckpointWriter:
    writer = CheckpointWriter(root, rank=0, keep=keep, background=background)
    writer.save(state(step), step, {"world_size": 1, "config": CONFIG})
    writer.close()
    return writer


def test_saved_checkpoint_round_trips(group, tmp_path):
    result = save(tmp_path, 5).last
    folder = step_dir(tmp_path, 5)
    assert result.folder == folder and not result.error and (folder / MARKER).is_file()
    assert read_marker(folder)["config"] == CONFIG and read_marker(folder)["step"] == 5
    loaded = read_whole(folder)
    assert torch.equal(loaded["w"], torch.arange(4.0) * 5) and loaded["progress"] == {"step": 5, "loss": 0.5}
    template = {"w": torch.zeros(4), "progress": {"step": 0, "loss": 0.0}}
    read_state(template, folder, process_group=None)
    assert torch.equal(template["w"], torch.arange(4.0) * 5) and template["progress"]["step"] == 5
    assert not list(tmp_path.glob("*.partial"))


def test_background_save_returns_before_its_write_and_keeps_the_state_of_its_step(group, tmp_path, monkeypatch):
    from cluster.runtime import checkpoint_writer

    writing, release = threading.Event(), threading.Event()
    real_write = checkpoint_writer.write_state

    def held_write(*args, **kwargs):  # a write that lasts until the test has trained on
        writing.set()
        if not release.wait(10):
            raise RuntimeError("the write was held for 10 s: save() did not return before it")
        real_write(*args, **kwargs)

    monkeypatch.setattr(checkpoint_writer, "write_state", held_write)
    live = state(7)
    writer = CheckpointWriter(tmp_path, rank=0, keep=3, background=True)
    writer.save(live, 7, {"world_size": 1, "config": CONFIG})
    assert writing.wait(10)  # the write has begun, and training is back in control while it lasts
    live["w"].add_(100)  # the next training step changes the live state
    assert not (step_dir(tmp_path, 7) / MARKER).exists()
    release.set()
    result = writer.close()
    assert not result.error and result.stall_s < 1.0
    assert torch.equal(read_whole(step_dir(tmp_path, 7))["w"], torch.arange(4.0) * 7)


def test_staged_copy_shares_no_memory():
    original = {"a": [torch.ones(2)], "b": (torch.zeros(1), 3)}
    copy = stage(original)
    original["a"][0].add_(1)
    assert torch.equal(copy["a"][0], torch.ones(2)) and copy["b"][1] == 3 and isinstance(copy["b"], tuple)


def test_the_next_save_copies_into_the_last_saves_memory():
    first = stage({"w": torch.ones(3), "steps": [torch.zeros(2)]})
    live = {"w": torch.full((3,), 2.0), "steps": [torch.zeros(5)]}  # a tensor that changed shape gets new memory
    second = stage(live, first)
    assert second["w"].data_ptr() == first["w"].data_ptr() and torch.equal(second["w"], live["w"])
    assert second["steps"][0].shape == (5,)
    live["w"].add_(1)
    assert torch.equal(second["w"], torch.full((3,), 2.0))


def test_newest_complete_checkpoint_wins_and_partial_ones_are_ignored(group, tmp_path):
    save(tmp_path, 10)
    save(tmp_path, 20)
    (tmp_path / "step-000030.partial").mkdir()  # a writer killed mid-way
    unmarked = step_dir(tmp_path, 40)  # a folder without its marker
    unmarked.mkdir()
    (unmarked / ".metadata").write_bytes(b"x")
    assert latest_checkpoint(tmp_path) == step_dir(tmp_path, 20)
    assert remove_partials(tmp_path) == [tmp_path / "step-000030.partial"]


def test_failed_write_keeps_the_previous_checkpoint_and_leaves_nothing_half_written(group, tmp_path):
    save(tmp_path, 10)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64, hard))  # a disk that fills up after 64 bytes per file
    try:
        writer = CheckpointWriter(tmp_path, rank=0, keep=10, background=True)
        writer.save(state(20), 20, {"world_size": 1, "config": CONFIG})
        result = writer.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert result.folder is None and "step-000020.partial (" in result.error
    assert "MB free there): check the free space" in result.error
    assert [step for step, _ in list_checkpoints(tmp_path)] == [10]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-000010"]


def test_truncated_file_is_refused_by_its_size(group, tmp_path):
    save(tmp_path, 10)
    folder = step_dir(tmp_path, 10)
    data = (folder / "__0_0.distcp").read_bytes()
    (folder / "__0_0.distcp").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"corrupt: __0_0.distcp is \d+ bytes, expected \d+ bytes; move .* out"):
        read_marker(folder)


def test_garbage_index_of_the_right_size_is_refused(group, tmp_path):
    save(tmp_path, 10)
    index = step_dir(tmp_path, 10) / ".metadata"
    index.write_bytes(b"\0" * index.stat().st_size)
    read_marker(index.parent)  # sizes match...
    with pytest.raises(CheckpointError, match="checkpoint index .* cannot be read"):
        SafeReader(str(index.parent)).read_metadata()  # ...but it is no index


class Exploit:
    def __reduce__(self):
        return (print, ("pwned",))


def test_code_in_the_index_is_refused(group, tmp_path):
    save(tmp_path, 10)
    index = step_dir(tmp_path, 10) / ".metadata"
    index.write_bytes(pickle.dumps({"payload": Exploit()}))
    with pytest.raises(CheckpointError, match="builtins.print is not part of a DCP index"):
        read_whole(index.parent)


def test_code_in_a_value_is_refused(group, tmp_path):
    writer = CheckpointWriter(tmp_path, rank=0, keep=3, background=False)
    writer.save({"w": torch.ones(1), "extra": {"path": Path("/tmp")}}, 3, {"world_size": 1, "config": CONFIG})
    with pytest.raises(CheckpointError, match="extra.path holds more than tensors and plain containers"):
        read_whole(step_dir(tmp_path, 3))


def test_unreadable_marker_is_refused(group, tmp_path):
    save(tmp_path, 10)
    (step_dir(tmp_path, 10) / MARKER).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable COMPLETE marker"):
        read_marker(step_dir(tmp_path, 10))


def test_incompatible_config_names_each_change_unless_allowed(group, tmp_path):
    save(tmp_path, 10)
    folder = step_dir(tmp_path, 10)
    other = {**CONFIG, "optim.lr": 0.1}
    with pytest.raises(CheckpointError, match=r"optim.lr: 0.05 -> 0.1\); run with the same settings to resume, "
                                              r"allow the change with allow_changes=\[optim.lr\]") as refused:
        check_compatible(read_marker(folder)["config"], other, folder=folder)
    # the library names its own setting; the trainer tells its users the config keys
    assert "allow the change with train.allow_changes=[optim.lr]" in describe(refused.value)
    assert "a new run directory (hydra.run.dir=...)" in describe(refused.value)
    check_compatible(read_marker(folder)["config"], dict(CONFIG), folder=folder)
    check_compatible(read_marker(folder)["config"], other, folder=folder, allowed=("optim.lr",))


def test_prune_keeps_the_newest(group, tmp_path):
    for step in (1, 2, 3, 4):
        save(tmp_path, step, keep=2)
    assert [step for step, _ in list_checkpoints(tmp_path)] == [3, 4]


def test_marker_records_every_file_size(group, tmp_path):
    save(tmp_path, 3)
    folder = step_dir(tmp_path, 3)
    sizes = json.loads((folder / MARKER).read_text())["files"]
    assert sizes == {p.name: p.stat().st_size for p in folder.iterdir() if p.name != MARKER}


def test_a_save_is_not_tried_without_room_and_three_failures_in_a_row_stop_the_run(group, tmp_path, monkeypatch):
    from cluster.runtime import checkpoint_writer
    from cluster.runtime.checkpoint_writer import MAX_FAILURES_IN_A_ROW, SaveFailedError

    writer = save(tmp_path, 1)  # 1 checkpoint on disk: the next needs as much again
    free = {"bytes": 10 << 20}
    monkeypatch.setattr(checkpoint_writer.shutil, "disk_usage",
                        lambda path: type("usage", (), {"free": free["bytes"]})())
    free["bytes"] = 1000  # less than a checkpoint: the filesystem visibly lacks the room
    for step in range(2, 2 + MAX_FAILURES_IN_A_ROW):
        writer.save(state(step), step, {"world_size": 1, "config": CONFIG})
        writer.close()
        assert writer.last.error.startswith("not tried: it needs about") and "MB are free at" in writer.last.error
        assert not partial_dir(tmp_path, step).exists() and not step_dir(tmp_path, step).exists()
    assert [step for step, _ in list_checkpoints(tmp_path)] == [1], "nothing complete was deleted to make room"
    with pytest.raises(SaveFailedError, match="3 checkpoints in a row could not be written"):
        writer.save(state(9), 9, {"world_size": 1, "config": CONFIG})
    with pytest.raises(SaveFailedError, match="the checkpoint at step 4 could not be written"):
        writer.check_last()  # a failed final save fails the run
    free["bytes"] = 10 << 20
    writer.failures_in_a_row = 0
    writer.save(state(10), 10, {"world_size": 1, "config": CONFIG})
    writer.check_last()  # room again: saved, no error
    assert step_dir(tmp_path, 10).is_dir()
