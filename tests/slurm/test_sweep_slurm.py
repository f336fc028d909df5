"""Sweeps on the real local Slurm cluster: one array, the prompt back at once, status, retry, collect,
arrays split below MaxArraySize, and status while the accounting daemon is down."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.slurm.commands import max_array_size, parse_states
from tests.helpers import REPO, cli, read_manifest, run_sweep, wait_done

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]
# Eleven learning rates that train and one that diverges (its loss turns nan: FAILED, never retried by itself).
LRS = "0.01,0.02,0.03,0.05,0.07,0.1,0.15,0.2,0.3,0.4,0.5,1e6"


def sweep(sweep_dir: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, float]:
    return run_sweep(sweep_dir, "cluster=slurm", *overrides)


def sacct_tasks(array: str) -> set[str]:
    out = subprocess.run(["sacct", "-n", "-P", "-X", "-j", array, "--format=JobID,State,Elapsed"],
                         capture_output=True, text=True, check=True).stdout
    return set(parse_states(out))


def test_a_12_member_sweep_is_one_array_followed_retried_and_collected(tmp_path):
    result, seconds = sweep(tmp_path, "train.steps=60", f"optim.lr={LRS}")
    print(f"time to prompt, 12 members: {seconds:.2f} s")
    assert seconds < 10, f"{seconds:.1f} s to the prompt"  # ~1.2 s alone (README); no member waited for
    assert "submitted 12 member(s) as 1 job array(s)" in result.stdout
    assert f"python -m cluster status {tmp_path}" in result.stdout
    members = read_manifest(tmp_path)["members"]
    (array,) = {m["job_id"] for m in members}
    assert [(m["index"], m["task_id"]) for m in members] == [(i, i) for i in range(12)]

    status = wait_done(tmp_path, timeout=300)
    assert sacct_tasks(array) == {f"{array}_{i}" for i in range(12)}  # one array of 12 tasks, as sacct saw it
    recent = cli("status").stdout.splitlines()  # no path: the submissions on record, this sweep among them
    assert recent[1].endswith(str(tmp_path)) and "sweep (slurm)  12" in recent[1], recent
    states = {m["member"]: m["state"] for m in status["members"]}
    assert states == {**{i: "COMPLETED" for i in range(11)}, 11: "FAILED"} and status["exit"] == 1
    assert status["source"] == "sacct" and "training diverged" in status["members"][11]["error"]
    assert status["members"][0]["step"] == 60 and status["members"][0]["loss"] is not None
    table = cli("status", str(tmp_path))
    assert "member 11 FAILED:" in table.stdout and "11 COMPLETED, 1 FAILED (states from sacct)" in table.stdout

    collected = cli("collect", str(tmp_path))
    assert collected.returncode == 0 and "best by final_loss (min): member" in collected.stdout
    assert len((tmp_path / "results.csv").read_text().splitlines()) == 1 + 11
    assert (tmp_path / "loss_curves.png").read_bytes()[:4] == b"\x89PNG"

    retried = cli("retry", str(tmp_path), "--failed")
    assert retried.returncode == 3 and "resubmitted member(s) 11 as job" in retried.stdout, retried.stderr
    after = read_manifest(tmp_path)["members"]
    assert after[:11] == members[:11]  # the others are left alone
    assert after[11]["job_id"] != array and after[11]["attempts"][0]["job_id"] == array
    again = wait_done(tmp_path, timeout=180)
    assert again["members"][11]["state"] == "FAILED" and again["members"][11]["restarts"] >= 1
    assert sacct_tasks(after[11]["job_id"]) == {f"{after[11]['job_id']}_0"}  # it went alone: an array of one


def local_cluster_up(**environ: str) -> None:
    subprocess.run([str(REPO / "slurm" / "local-cluster"), "up"], check=True, capture_output=True, timeout=180,
                   env={**os.environ, **environ})


def test_300_members_are_split_below_the_clusters_max_array_size_each_once(tmp_path):
    local_cluster_up(MAX_ARRAY_SIZE="128")  # restarts slurmctld with the smaller limit
    try:
        assert max_array_size() == 128
        result, seconds = sweep(tmp_path, "train.steps=1", "train.seed=range(0,300)",
                                "hydra.launcher.array_parallelism=2")
        print(f"time to prompt, 300 members: {seconds:.2f} s")
        assert seconds < 20, f"{seconds:.1f} s to the prompt"
        members = read_manifest(tmp_path)["members"]
        assert [m["index"] for m in members] == list(range(300))
        arrays = sorted({m["job_id"] for m in members}, key=int)
        assert f"submitted 300 member(s) as 3 job array(s): {', '.join(arrays)}" in result.stdout
        sizes = [sum(m["job_id"] == a for m in members) for a in arrays]
        assert sizes == [128, 128, 44]
        assert len({(m["job_id"], m["task_id"]) for m in members}) == 300
        assert all(0 <= m["task_id"] < 128 for m in members)
        # O(1) files per array: no pickle per task (submitit's map_array wrote one each), no member's directory
        # made before its task starts (at most 2 per array run at once)
        assert not list((tmp_path / "logs").glob("*.pkl"))
        assert {p.name for p in tmp_path.iterdir() if p.is_file()} == {"manifest.json", "submissions.pkl",
                                                                       "multirun.yaml"}
        assert len([p for p in tmp_path.iterdir() if p.is_dir() and p.name != "logs"]) < 100
    finally:
        cancelled = cli("cancel", str(tmp_path))
        local_cluster_up()  # MaxArraySize back to the default
    assert cancelled.returncode == 0
    status = wait_done(tmp_path, timeout=120)
    assert sum(status["counts"].values()) == 300
    assert set(status["counts"]) <= {"CANCELLED", "COMPLETED"}, status["counts"]


def test_status_without_accounting_reads_squeue_and_the_run_directories(tmp_path):
    finished, running = tmp_path / "finished", tmp_path / "running"
    # hydra.launcher.wait=true: the command stays until every member has ended, and exits as status would
    waited = subprocess.run([sys.executable, "-m", "jobs.train", "-m", "cluster=slurm", "train.steps=40",
                             "optim.lr=0.1,1e6", "hydra.launcher.wait=true", f"hydra.sweep.dir={finished}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert waited.returncode == 1, waited.stdout + waited.stderr
    ended = json.loads(cli("status", str(finished), "--json").stdout)
    assert {m["state"] for m in ended["members"]} == {"COMPLETED", "FAILED"}, ended
    subprocess.run(["pkill", "-x", "slurmdbd"], check=True)
    try:
        time.sleep(1)
        assert subprocess.run(["sacct", "-n", "-X"], capture_output=True).returncode != 0, "slurmdbd still answers"
        sweep(running, "train.steps=100000", "train.seed=0,1")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            queued = json.loads(cli("status", str(running), "--json").stdout)
            if {m["state"] for m in queued["members"]} == {"RUNNING"}:
                break
            time.sleep(1)
        assert {m["state"] for m in queued["members"]} == {"RUNNING"}, queued
        assert queued["source"].startswith("squeue")
        done = cli("status", str(finished))
        assert "1 COMPLETED, 1 FAILED (states from squeue and the run directories" in done.stdout, done.stdout
        assert done.returncode == 1
    finally:
        cli("cancel", str(running))
        local_cluster_up()


def test_submitting_a_run_and_a_sweep_imports_no_torch(tmp_path):
    """torch takes seconds to import on a login node. Here a torch that cannot be imported comes first on the
    submitting process's path: submission must not need it. (The jobs inherit that path and would fail on their
    nodes: they are cancelled at once.)"""
    poison = tmp_path / "poison" / "torch"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text('raise ImportError("torch was imported while submitting")\n')
    env = {**os.environ, "PYTHONPATH": str(poison.parent)}
    single = subprocess.run([sys.executable, "-m", "jobs.train", "cluster=slurm", f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert single.returncode == 0 and "submitted job " in single.stdout, single.stdout + single.stderr
    subprocess.run(["scancel", single.stdout.split("submitted job ")[1].split()[0]], check=True)
    swept = subprocess.run([sys.executable, "-m", "jobs.train", "-m", "cluster=slurm", "optim.lr=0.1,0.2",
                            f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=REPO, capture_output=True, text=True,
                           timeout=120, env=env)
    assert swept.returncode == 0 and "submitted 2 member(s) as 1 job array(s)" in swept.stdout, swept.stderr
    assert cli("cancel", str(tmp_path / "sweep")).returncode == 0
