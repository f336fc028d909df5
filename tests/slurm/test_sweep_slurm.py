"""Sweeps on the real local Slurm cluster: one array, the prompt back at once, status, retry, collect,
arrays split below MaxArraySize, and status while the accounting daemon is down."""

import json
import os
import subprocess
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
    assert "submitted 12 member(s) as 1 job array(s)" in result.stdout
    assert f"python -m cluster status {tmp_path}" in result.stdout
    members = read_manifest(tmp_path)["members"]
    (array,) = {m["job_id"] for m in members}
    assert [(m["index"], m["task_id"]) for m in members] == [(i, i) for i in range(12)]

    status = wait_done(tmp_path, timeout=300)
    assert sacct_tasks(array) == {f"{array}_{i}" for i in range(12)}  # one array of 12 tasks, as sacct saw it
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
    assert sacct_tasks(after[11]["job_id"]) == {after[11]["job_id"]}  # it went alone


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
        members = read_manifest(tmp_path)["members"]
        assert [m["index"] for m in members] == list(range(300))
        arrays = sorted({m["job_id"] for m in members}, key=int)
        assert f"submitted 300 member(s) as 3 job array(s): {', '.join(arrays)}" in result.stdout
        sizes = [sum(m["job_id"] == a for m in members) for a in arrays]
        assert sizes == [128, 128, 44]
        assert len({(m["job_id"], m["task_id"]) for m in members}) == 300
        assert all(0 <= m["task_id"] < 128 for m in members)
    finally:
        cancelled = cli("cancel", str(tmp_path))
        local_cluster_up()  # MaxArraySize back to the default
    assert cancelled.returncode == 0
    status = wait_done(tmp_path, timeout=120)
    assert sum(status["counts"].values()) == 300
    assert set(status["counts"]) <= {"CANCELLED", "COMPLETED"}, status["counts"]


def test_status_without_accounting_reads_squeue_and_the_run_directories(tmp_path):
    finished, running = tmp_path / "finished", tmp_path / "running"
    sweep(finished, "train.steps=40", "optim.lr=0.1,1e6")
    assert {m["state"] for m in wait_done(finished, timeout=180)["members"]} == {"COMPLETED", "FAILED"}
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
