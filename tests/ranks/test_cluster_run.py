"""``python -m cluster run --local N``: an unmodified torchrun-style script, and scripts on the public API
(``cluster.start``) interrupted and resumed exactly, on local ranks (gloo)."""

import ast
import difflib
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cluster.rundir import read_events
from tests.helpers import REPO

API_SCRIPT = ("tests/scripts/api_train.py",)  # 1000 steps, ~5 ms each here
# The ranks vote on a warning about every 0.25 s (cluster/runtime/stop_vote.py): one sent at step N is acted
# on up to ~100 steps later here, more on a loaded machine, so the tests stop the script by step 400 (a
# warning after its last step is no preemption to test).
LATEST_STOP = 400


# Python's stack in a rank's log if it aborts: torch 2.14's gloo has aborted a plain script at its exit
# ("terminate called without an active exception") about once in 20 runs here.
DIAGNOSE = {**os.environ, "PYTHONFAULTHANDLER": "1"}


def cluster_run(run_dir: Path, *command: str, options: tuple[str, ...] = ("--local", "2"),
                timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cluster", "run", *options, "--run-dir", str(run_dir), "--",
                           sys.executable, *command], cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=DIAGNOSE)


def digest_of(output: str) -> str:
    found = re.search(r"param digest: ([0-9a-f]{64})", output)
    assert found, output[-3000:]
    return found.group(1)


def interrupted(run_dir: Path, *command: str, at_least: int = 0, sig: signal.Signals = signal.SIGUSR2,
                ready: Callable[[], bool] | None = None, timeout: float = 300) -> tuple[int, str, str]:
    """Run ``command`` under ``--local 2``, send ``sig`` to the controller once the script's step file says
    ``at_least`` (a random step; or once ``ready()``), then let it end; exit code, stdout, stderr."""
    running = subprocess.Popen([sys.executable, "-m", "cluster", "run", "--local", "2", "--run-dir", str(run_dir),
                                "--", sys.executable, *command], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)

    def at_step() -> bool:
        step = run_dir / "step"
        return step.exists() and int(step.read_text() or 0) >= at_least

    deadline = time.monotonic() + timeout
    while not (ready or at_step)():
        assert running.poll() is None and time.monotonic() < deadline, running.communicate()
        time.sleep(0.02)
    running.send_signal(sig)
    out, err = running.communicate(timeout=timeout)
    return running.returncode, out, err


@pytest.mark.slow
def test_an_unmodified_torchrun_script_runs_as_under_torchrun(tmp_path):
    script = ("examples/torchrun_ddp.py", "--epochs", "2")
    ours = cluster_run(tmp_path / "ours", *script)
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert "world 2, hosts" in ours.stdout and "sum of ranks 1" in ours.stdout
    torchrun = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", *script],
                              cwd=REPO, capture_output=True, text=True, timeout=300)
    assert torchrun.returncode == 0, torchrun.stderr[-3000:]
    assert digest_of(ours.stdout) == digest_of(torchrun.stdout)
    assert [e["event"] for e in read_events(tmp_path / "ours")] == ["finished"]
    assert (tmp_path / "ours" / "logs" / "rank-1.out").read_text().count("Rank 1, epoch") == 2


@pytest.mark.slow
def test_an_api_script_preempted_at_a_random_step_ends_as_an_uninterrupted_run(tmp_path):
    whole = cluster_run(tmp_path / "whole", *API_SCRIPT)
    assert whole.returncode == 0, whole.stderr[-3000:]
    at = random.Random().randint(60, LATEST_STOP)
    print(f"preempting at step {at}")
    code, out, err = interrupted(tmp_path / "cut", *API_SCRIPT, at_least=at)
    assert code == 0, err[-3000:]
    assert digest_of(out) == digest_of(whole.stdout)
    events = read_events(tmp_path / "cut")
    signalled = [e for e in events if e["event"] == "signalled"]
    assert signalled and signalled[0]["cause"] == "signal" and signalled[0]["step"] >= at
    resumed = [e for e in events if e["event"] == "resumed"]
    assert resumed[0]["step"] == signalled[0]["step"]  # nothing lost: it resumed at the step it stopped at
    assert f"resumed from {signalled[0]['step']}" in out


@pytest.mark.slow
def test_ctrl_c_saves_and_the_same_command_resumes_exactly(tmp_path):
    whole = cluster_run(tmp_path / "whole", *API_SCRIPT)
    code, _, err = interrupted(tmp_path / "cut", *API_SCRIPT, at_least=random.Random().randint(60, LATEST_STOP),
                               sig=signal.SIGINT)
    stopped = [e for e in read_events(tmp_path / "cut") if e["event"] == "signalled"]
    assert stopped and stopped[0]["signal"] == "INT" and stopped[0]["cause"] == "interrupt"
    assert code == 130 and f"stopped at step {stopped[0]['step']} (Ctrl-C)" in err, err[-3000:]
    assert "Traceback" not in err
    assert [e["event"] for e in read_events(tmp_path / "cut")].count("requeued") == 0
    again = cluster_run(tmp_path / "cut", *API_SCRIPT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert digest_of(again.stdout) == digest_of(whole.stdout)
    assert f"resumed from {stopped[0]['step']}" in again.stdout


def code_lines(path: Path) -> list[str]:
    """The lines of a script after its docstring, blank ones left out."""
    text = path.read_text()
    module = ast.parse(text)
    skip = module.body[0].end_lineno or 0 if ast.get_docstring(module) else 0
    return [line for line in text.splitlines()[skip:] if line.strip()]


@pytest.mark.slow
def test_the_seed_script_needs_ten_lines_to_survive_a_preemption(tmp_path):
    plain, safe = code_lines(REPO / "examples/torchrun_ddp.py"), code_lines(REPO / "examples/seed_preemptible.py")
    added = [line[2:] for line in difflib.ndiff(plain, safe) if line.startswith("+ ")]
    assert all(line.endswith("# clusterjobs") for line in added) and len(added) <= 10, added
    print(f"{len(added)} lines added or changed")
    whole = cluster_run(tmp_path / "whole", "examples/seed_preemptible.py", "--epochs", "40")
    assert whole.returncode == 0, whole.stderr[-3000:]
    log = tmp_path / "cut" / "logs" / "rank-0.out"
    code, out, err = interrupted(tmp_path / "cut", "examples/seed_preemptible.py", "--epochs", "40",
                                 ready=lambda: log.exists() and "epoch 3," in log.read_text())
    assert code == 0, err[-3000:]
    assert digest_of(out) == digest_of(whole.stdout)
    assert [e["event"] for e in read_events(tmp_path / "cut")].count("signalled") == 1  # stopped mid-run, resumed


def test_a_plain_script_that_crashes_is_retried_within_the_failure_budget(tmp_path):
    crash = tmp_path / "crash.py"
    crash.write_text("import os, sys\nprint('attempt', flush=True)\nsys.exit(3 if os.environ['RANK'] == '1' else 0)\n")
    done = cluster_run(tmp_path / "run", str(crash), options=("--local", "2", "--failure", "1"))
    assert done.returncode == 3, done.stderr
    assert done.stdout.count("attempt") == 2  # rank 0's output, once per attempt: the first and one retry
    assert done.stderr.strip().splitlines()[-1] == (
        "error: the command exited with 3 (failure), and the failure budget of 1 requeue(s) spent (--failure=1)")
    assert [e["event"] for e in read_events(tmp_path / "run")] == ["requeued", "failed"]


def test_a_plain_script_asking_to_come_back_is_started_again(tmp_path):
    again = tmp_path / "again.py"
    again.write_text("import os, sys\nfrom pathlib import Path\nmark = Path(os.environ['CLUSTERJOBS_RUN_DIR'], "
                     "'mark' + os.environ['RANK'])\nif not mark.exists():\n    mark.touch()\n    sys.exit(144)\n"
                     "print('second run', flush=True)\n")
    done = cluster_run(tmp_path / "run", str(again))
    assert done.returncode == 0 and "second run" in done.stdout, done.stderr
    events = read_events(tmp_path / "run")
    assert [(e["event"], e.get("cause")) for e in events] == [("requeued", "requested"), ("finished", None)]


@pytest.mark.parametrize("command, message", [
    (["no-such-program"], "error: the command 'no-such-program' does not exist here"),
    ([sys.executable, "missing.py"], "error: the script 'missing.py' does not exist"),
    ([], "error: no command given"),
])
def test_a_command_that_does_not_exist_is_refused_before_anything_starts(tmp_path, command, message):
    done = subprocess.run([sys.executable, "-m", "cluster", "run", "--local", "2", "--run-dir", str(tmp_path / "r"),
                           "--", *command], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.startswith(message) and len(done.stderr.splitlines()) == 1, done.stderr
    assert not (tmp_path / "r").exists()


def test_the_api_outside_cluster_run_needs_a_run_directory(tmp_path):
    script = "import cluster\nwith cluster.start() as job:\n    pass\n"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={k: v for k, v in os.environ.items() if not k.startswith("CLUSTERJOBS_")})
    assert done.returncode == 1 and "cluster.start needs a run directory" in done.stderr
