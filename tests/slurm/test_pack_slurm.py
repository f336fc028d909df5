"""Many small members packed into few allocations (``hydra.launcher.pack``) on the real local Slurm cluster: one
allocation per pack, each member its own run, and a preempted pack that comes back for its unfinished members
only, each resuming exactly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import (
    REPO,
    cli,
    events_named,
    in_background,
    last_step,
    read_manifest,
    read_summary,
    wait_done,
    wait_until,
)
from tests.slurm.test_requeue_slurm import preempt_everything
from tests.slurm.test_sweep_slurm import sacct_tasks

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
# The example package's model with dropout and its data with a random jitter: ~300 steps/s on one rank here, so
# a member trains for ~3 s and a preemption (~2 s to arrive) meets one mid-way.
EXAMPLE = ("--config-dir", "examples/myconf", "model=resmlp", "data=shapes", "model.dropout=0.1", "data.jitter=0.1")
MEMBER = ("train.steps=1000", "train.global_batch_size=64", "train.log_every_steps=10",
          "train.checkpoint_every_steps=400")
ENV = {**os.environ, "PYTHONPATH": str(REPO / "examples")}


def train(*overrides: str, sweep: bool = False, **popen) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "jobs.train", *(["-m"] if sweep else []), *EXAMPLE, *MEMBER,
                           *overrides], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300, **popen)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def reference(seed: int, run_dir: Path) -> str:
    """The digest of member ``seed`` trained without a stop, in one process on one CPU: a member's Slurm task has
    one CPU, so torch sums in one thread, and a second thread would sum in another order."""
    train("cluster=debug", f"train.seed={seed}", f"hydra.run.dir={run_dir}",
          preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}))
    return read_summary(run_dir)["param_digest"]


def test_40_members_packed_8_to_an_allocation_survive_a_preemption_each_resuming_exactly(tmp_path):
    sweep_dir = tmp_path / "sweep"
    submitted = train("cluster=slurm", "train.seed=range(0,40)", "hydra.launcher.pack=8",
                      f"hydra.sweep.dir={sweep_dir}", sweep=True)
    assert "submitted 40 member(s) as 1 job array(s), 8 members to an allocation" in submitted.stdout
    members = read_manifest(sweep_dir)["members"]
    (array,) = {m["job_id"] for m in members}
    assert [m["task_id"] for m in members] == [i // 8 for i in range(40)]  # members 0-7 in task 0, ...
    run_dirs = [Path(m["run_dir"]) for m in members]

    def mid_pack() -> bool:  # a pack with two members done and one at a step a preemption can still stop
        for task in range(5):
            pack = run_dirs[task * 8:(task + 1) * 8]
            done = sum((d / "summary.json").is_file() for d in pack)
            training = [d for d in pack if not (d / "summary.json").is_file() and last_step(d) > 0]
            if done >= 2 and training and 100 <= last_step(training[0]) <= 400:
                return True
        return False

    wait_until(mid_pack, timeout=240, what="a pack with two members finished and a third at step 100-400")
    finished_before = {i for i, d in enumerate(run_dirs) if (d / "summary.json").is_file()}
    preempt_everything()
    status = wait_done(sweep_dir, timeout=400)

    # every member COMPLETED, with its own summary; five allocations in Slurm's accounting
    assert status["exit"] == 0 and status["counts"] == {"COMPLETED": 40}, status["counts"]
    assert all(read_summary(d)["steps"] == 1000 for d in run_dirs)
    assert sacct_tasks(array) == {f"{array}_{task}" for task in range(5)}
    table = cli("status", str(sweep_dir)).stdout
    assert f"{array}_4" in table.splitlines()[-1]  # the allocation column: member 39 is in task 4

    # the members a preemption stopped resumed where it stopped them, to the digest of a run never stopped
    stopped = [i for i, d in enumerate(run_dirs) if events_named(d, "signalled")]
    assert stopped, "the preemption stopped no member"
    print(f"stopped by the preemption: members {stopped}; finished before it: {sorted(finished_before)}")
    expected = {i: in_background(reference, i, tmp_path / f"reference-{i}") for i in stopped}
    for i in stopped:
        signalled = events_named(run_dirs[i], "signalled")[0]
        assert signalled["cause"] == "preemption"
        assert read_summary(run_dirs[i])["resumed_from_step"] == signalled["step"] > 0
        assert read_summary(run_dirs[i])["param_digest"] == expected[i].result(), f"member {i} did not resume exactly"

    # the members a preempted pack had finished were not run again when it came back
    requeued_tasks = {i // 8 for i in stopped}
    again = [i for i in finished_before if i // 8 in requeued_tasks]
    assert again, "no finished member shared an allocation with a stopped one"
    for i in again:
        assert len(events_named(run_dirs[i], "started")) == 1, f"member {i} ran again"
    logs = "".join((sweep_dir / "logs" / f"{array}_{task}_0_log.out").read_text() for task in requeued_tasks)
    assert all(f"member {i}: finished in an earlier run of this allocation; not run again" in logs for i in again)


def test_members_of_a_pack_on_two_ranks_each_end_as_if_each_had_run_alone(tmp_path):
    """Members one after another in the same processes: each joins its own process group, and nothing of the
    member before it (random state, process group, data) reaches it. Two ranks on one node, two members a pack."""
    sweep_dir = tmp_path / "sweep"
    short = ("train.steps=200", "cluster.tasks_per_node=2")

    def alone(seed: int) -> str:  # two local ranks: one CPU each, as the Slurm tasks have
        train(*short, "cluster=local", f"train.seed={seed}", f"hydra.run.dir={tmp_path / f'alone-{seed}'}")
        return read_summary(tmp_path / f"alone-{seed}")["param_digest"]

    expected = {seed: in_background(alone, seed) for seed in (1, 3)}
    train(*short, "cluster=slurm", "train.seed=0,1,2,3", "hydra.launcher.pack=2", f"hydra.sweep.dir={sweep_dir}",
          sweep=True)
    status = wait_done(sweep_dir, timeout=240)
    assert status["counts"] == {"COMPLETED": 4} and [m["ranks"] for m in status["members"]] == [[2]] * 4
    assert [m["job"] for m in status["members"]][1::2] == [m["job"] for m in status["members"]][0::2]  # shared
    for seed in (1, 3):  # the second member of each pack
        assert read_summary(sweep_dir / str(seed))["param_digest"] == expected[seed].result()
