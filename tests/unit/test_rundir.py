"""The run directory's claims: one live Slurm job per directory, and nothing left of a refused command."""

from pathlib import Path

import pytest

from cluster import rundir
from cluster.errors import RunDirectoryBusyError
from cluster.slurm import commands


def states(answers: dict[str, str]):
    """sacct/squeue's answer, faked at the subprocess boundary's edge (the real one: tests/slurm)."""
    return lambda job_ids: ({job: (answers[job], "00:01") for job in job_ids if job in answers}, "sacct")


def test_a_directory_claimed_by_a_live_job_is_refused_and_one_that_ended_is_free(tmp_path, monkeypatch):
    monkeypatch.setattr(commands, "job_states", states({"41": "RUNNING", "40": "COMPLETED", "7_3": "COMPLETING"}))
    live, ended, array_task, unclaimed = (tmp_path / name for name in ("live", "ended", "array", "free"))
    rundir.claim(live, "41")
    rundir.claim(ended, "40")
    rundir.claim(array_task, "7_3")
    unclaimed.mkdir()
    rundir.check_unclaimed([ended, unclaimed])
    rundir.check_unclaimed([live], allowed="41")  # the job itself, on its rank 0
    with pytest.raises(RunDirectoryBusyError, match=r"belongs to Slurm job 41, which is RUNNING; wait for it to "
                                                    r"end, cancel it \(scancel 41\), or choose another run_dir"):
        rundir.check_unclaimed([ended, live])
    with pytest.raises(RunDirectoryBusyError, match=r"array \(and 1 more\) belongs to Slurm job 7_3"):
        rundir.check_unclaimed([array_task, live])


def test_slurm_is_not_asked_when_nothing_is_claimed(tmp_path, monkeypatch):
    monkeypatch.setattr(commands, "job_states", lambda job_ids: pytest.fail("asked Slurm"))
    rundir.check_unclaimed([tmp_path, tmp_path / "missing"])


def test_only_a_directory_where_nothing_trained_nor_was_submitted_is_removed(tmp_path):
    refused = tmp_path / "refused"
    (refused / ".hydra").mkdir(parents=True)
    (refused / "logs").mkdir()
    (refused / "train.log").write_text("")
    assert rundir.remove_if_unused(refused, also=(".hydra", "train.log")) and not refused.exists()
    for made in ("events.jsonl", ".claim", "checkpoints", "notes.txt"):
        kept = tmp_path / made.strip(".")
        (kept / ".hydra").mkdir(parents=True)
        Path(kept / made).mkdir() if made == "checkpoints" else (kept / made).write_text("x")
        assert not rundir.remove_if_unused(kept, also=(".hydra", "train.log")) and (kept / made).exists()
