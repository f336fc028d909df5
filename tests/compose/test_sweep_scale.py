"""Sweeps at scale, without Slurm: arrays of packed members, what an array task runs, the member states of a
pack, ``status`` filters and the list of recent runs (the real cluster: ``tests/slurm/test_pack_slurm.py``)."""

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from cluster import history
from cluster.by_name import ByName
from cluster.cli import main
from cluster.requeue import EXIT_REQUEUE, JobEnd
from cluster.rundir import check_unclaimed, check_writable, claimed_by
from cluster.slurm.resources import SlurmResources
from cluster.sweep import array_task
from cluster.sweep.array_task import spans
from cluster.sweep.arrays import allocation, plan_arrays, runner_args
from cluster.sweep.manifest import Manifest, Member
from cluster.sweep.status import in_pack
from tests.helpers import REPO


def test_members_are_packed_into_array_tasks_below_the_array_limit():
    small, big = SlurmResources(timeout_min=10), SlurmResources(timeout_min=10, nodes=2)
    submissions = [(Member(i, [], f"/s/{i}", 1), {"resources": big if i % 10 == 9 else small}) for i in range(30)]
    arrays = plan_arrays(submissions, limit=2, pack=4)  # at most 2 tasks of 4 members an array
    assert [(r.nodes, [m.index for m, _ in part]) for r, part in arrays] == [
        (1, [0, 1, 2, 3, 4, 5, 6, 7]), (1, [8, 10, 11, 12, 13, 14, 15, 16]), (1, [17, 18, 20, 21, 22, 23, 24, 25]),
        (1, [26, 27, 28]), (2, [9, 19, 29])]
    # an allocation lasts for its members one after another; an array of fewer members asks for less
    assert allocation(small, pack=4).timeout_min == 40 and allocation(small, pack=4, members=3).timeout_min == 30
    assert allocation(small, pack=1) is small
    assert runner_args("/s", [9, 19, 29], 4) == ["--sweep", "/s", "--members", "9,19,29", "--pack", "4"]


@pytest.mark.parametrize("numbers", [[0, 1, 2, 5, 7, 8], [3], list(range(10_000)), [4, 9, 10, 11, 40]])
def test_an_arrays_members_are_written_short_and_read_back_in_order(numbers):
    text = spans(numbers)
    assert array_task.parse_spans(text) == numbers and len(text) <= 6 * len(numbers)
    assert spans(list(range(10_000))) == "0-9999"
    assert array_task.members_of_task([4, 9, 10, 11, 40], 1, 2) == [10, 11]
    assert array_task.members_of_task([4, 9, 10, 11, 40], 2, 2) == [40]


CALLS: list[tuple[int, str]] = []


def member_task(index: int, run_dir: Path, outcome: str) -> str:
    """A stand-in for a member's training (``jobs.task.run_member``): records the call, and ends as told."""
    CALLS.append((index, os.environ.get("MASTER_PORT", "")))
    if outcome == "crash":
        raise RuntimeError(f"member {index} crashed")
    if outcome == "requeue":
        raise JobEnd(EXIT_REQUEUE)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "events.jsonl").write_text(json.dumps({"event": "finished", "job": "77"}) + "\n")
    return outcome


def array_of(tmp_path: Path, outcomes: dict[int, str]) -> None:
    fn = ByName(__name__, "member_task")
    (tmp_path / "submissions.pkl").write_bytes(pickle.dumps(
        {i: {"fn": fn, "args": (i, tmp_path / str(i), outcome), "resources": None, "run_dir": str(tmp_path / str(i))}
         for i, outcome in outcomes.items()}))


def test_an_array_task_runs_its_pack_in_order_past_a_failure_and_stops_for_a_requeue(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_PORT", "29400")  # (restored after the test whatever the code does)
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    array_of(tmp_path, {0: "ok", 1: "ok", 2: "ok", 3: "crash", 4: "ok", 5: "requeue", 6: "ok", 7: "ok"})
    CALLS.clear()
    with pytest.raises(JobEnd):  # task 1 of packs of 4: members 4, 5 (requeued: the allocation stops), 6, 7
        array_task.run(tmp_path, list(range(8)), pack=4)
    assert [index for index, _ in CALLS] == [4, 5]
    CALLS.clear()
    # the allocation comes back (the same job): member 4 finished in it and is not run again
    array_of(tmp_path, {0: "ok", 1: "ok", 2: "ok", 3: "crash", 4: "ok", 5: "ok", 6: "ok", 7: "ok"})
    assert array_task.run(tmp_path, list(range(8)), pack=4) == 0
    assert [index for index, _ in CALLS] == [5, 6, 7]
    assert len({port for _, port in CALLS}) == 3  # a port of its own for each member's process group
    assert os.environ["MASTER_PORT"] == "29400"  # and the environment as it was: no port leaks to a later run
    # task 0: member 3 fails for good, the pack goes on, and the task's exit code says one failed
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "0")
    CALLS.clear()
    assert array_task.run(tmp_path, list(range(8)), pack=4) == 1
    assert [index for index, _ in CALLS] == [0, 1, 2, 3]


def test_an_unpacked_array_task_is_its_one_member_whose_failure_is_the_tasks(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    array_of(tmp_path, {10: "ok", 20: "ok", 30: "crash"})
    CALLS.clear()
    with pytest.raises(RuntimeError, match="member 30 crashed"):
        array_task.run(tmp_path, [10, 20, 30])
    assert [index for index, _ in CALLS] == [30]


def events(run_dir: Path, *names: str) -> list[dict]:
    run_dir.mkdir(parents=True, exist_ok=True)
    listed = [{"time": f"2026-01-01T00:00:{i:02d}", "event": name} for i, name in enumerate(names)]
    (run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in listed))
    return listed


def test_a_packed_member_is_told_apart_from_the_others_of_its_running_allocation(tmp_path):
    since = "2026-01-01T00:00:00"
    done = tmp_path / "done"
    (done / "summary.json").parent.mkdir()
    (done / "summary.json").write_text("{}")
    assert in_pack("RUNNING", done, events(done, "started", "finished"), since) == "COMPLETED"
    training = tmp_path / "training"
    assert in_pack("RUNNING", training, events(training, "started"), since) == "RUNNING"
    stopped = tmp_path / "stopped"  # stopped by a preemption: waits for the allocation to come back to it
    assert in_pack("RUNNING", stopped, events(stopped, "started", "requeued"), since) == "PENDING"
    assert in_pack("RUNNING", tmp_path / "next", [], since) == "PENDING"
    assert in_pack("PENDING", tmp_path / "next", [], since) == "PENDING"
    assert in_pack("CANCELLED", tmp_path / "next", [], since) == "CANCELLED"
    assert in_pack("CANCELLED", done, [], since) == "COMPLETED"
    failed = tmp_path / "failed"
    assert in_pack("RUNNING", failed, events(failed, "started", "failed"), since) == "FAILED"


@pytest.fixture
def packed_sweep(tmp_path) -> Manifest:
    members = [Member(index=i, overrides=[f"train.seed={i}"], run_dir=str(tmp_path / str(i)), steps=10,
                      job_id="", task_id=i // 2) for i in range(4)]
    Path(members[0].run_dir).mkdir()
    (Path(members[0].run_dir) / "summary.json").write_text("{}")
    events(Path(members[1].run_dir), "started", "failed")
    manifest = Manifest(sweep_dir=str(tmp_path), kind="slurm", created_at="2026-01-01T00:00:00", members=members,
                        pack=2)
    manifest.write()
    return manifest


def test_status_says_the_counts_first_filters_by_state_and_names_each_members_allocation(packed_sweep, capsys):
    main(["status", packed_sweep.sweep_dir, "--state", "failed,completed"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("4 member(s): 1 COMPLETED, 1 FAILED, 2 UNKNOWN") and "showing 2" in lines[0]
    assert lines[1].split()[:3] == ["member", "state", "allocation"]
    assert [line.split()[:2] for line in lines[2:4]] == [["0", "COMPLETED"], ["1", "FAILED"]] and len(lines) == 4
    main(["status", packed_sweep.sweep_dir, "--state", "UNKNOWN", "--json"])
    shown = json.loads(capsys.readouterr().out)
    assert [m["member"] for m in shown["members"]] == [2, 3] and shown["counts"]["COMPLETED"] == 1


def test_status_with_no_path_lists_recent_runs_and_sweeps_newest_first(packed_sweep, tmp_path, capsys):
    assert main(["status"]) == 0
    assert "no runs or sweeps on record" in capsys.readouterr().out
    run_dir = tmp_path.parent / f"{tmp_path.name}-run"  # a run of its own, beside the sweep
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "logs" / "88_0_log.out").write_text("")
    history.record(Path(packed_sweep.sweep_dir), "slurm", members=4)
    history.record(run_dir, "run", job="88")
    history.record(tmp_path / "deleted-since", "run", job="89")
    assert main(["status"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["submitted", "kind", "members", "state", "progress", "path"]
    assert lines[1].endswith(str(run_dir)) and " run " in lines[1]
    assert lines[2].endswith(packed_sweep.sweep_dir) and "sweep (slurm)" in lines[2]
    assert "1 COMPLETED, 1 FAILED, 2 UNKNOWN" in lines[2] and len(lines) == 3


def test_a_sweep_member_makes_no_directory_until_it_starts_and_the_manifest_is_its_claim(packed_sweep):
    member = Path(packed_sweep.members[3].run_dir)
    check_writable(member, make=False)
    assert not member.exists()
    assert claimed_by(member) == ""
    packed_sweep.members[3].submitted("4242_1")
    packed_sweep.write()
    assert claimed_by(member) == "4242_1"
    check_unclaimed([member], allowed="4242_1")  # its own job may train there (no Slurm asked)


def test_pack_is_for_slurm_sweeps_and_a_dry_run_shows_the_packed_array(tmp_path):
    def sweep(*overrides: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "jobs.train", "-m", "train.seed=range(0,10)",
                               f"hydra.sweep.dir={tmp_path}", *overrides], cwd=REPO, capture_output=True, text=True,
                              timeout=120)

    local = sweep("cluster=local", "hydra.launcher.pack=4")
    assert local.returncode != 0 and "hydra.launcher.pack=4 packs members into Slurm allocations" in local.stderr
    dry = sweep("cluster=slurm", "cluster.dry_run=true", "cluster.timeout_min=5", "hydra.launcher.pack=4")
    assert dry.returncode == 0, dry.stderr
    assert "as 1 job array(s)" in dry.stdout and "(3 tasks, at most" in dry.stdout and "20 min" in dry.stdout
    assert "#SBATCH --array=0-2%" in dry.stdout and "#SBATCH --time=20" in dry.stdout
    assert "--members 0-9 --pack 4" in dry.stdout
    assert not tmp_path.exists() or not list(tmp_path.iterdir())  # a dry run leaves nothing


def test_cancelling_a_packed_member_names_the_members_its_allocation_held(packed_sweep, monkeypatch, capsys):
    for member in packed_sweep.members:
        member.submitted(f"500_{member.task_id}")
    packed_sweep.write()
    cancelled: list[str] = []
    monkeypatch.setattr("cluster.slurm.commands.cancel", cancelled.extend)
    assert main(["cancel", packed_sweep.sweep_dir, "2"]) == 0
    out = capsys.readouterr().out
    assert cancelled == ["500_1"] and "held member(s) 3: cancelled with them" in out


def test_a_reason_that_stops_many_members_is_said_once_with_the_members_it_stops(tmp_path):
    refused = subprocess.run([sys.executable, "-m", "jobs.train", "-m", "cluster=slurm", "cluster.dry_run=true",
                              "cluster.tasks_per_node=3", "train.global_batch_size=128", "train.seed=range(0,500)",
                              f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO, capture_output=True, text=True,
                             timeout=120)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2
    assert lines[0] == "error: 500 of 500 sweep member(s) would fail, nothing was submitted:"
    assert len(lines) == 2 and lines[1].startswith("  members 0-499 (500; the first: member 0 (")
    assert "not divisible by the 3 data-parallel replicas" in lines[1]
