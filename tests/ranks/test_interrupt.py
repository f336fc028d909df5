"""Ctrl-C of a local run in a terminal (a pseudo-terminal here): the ranks stop at a step boundary, save that very
step and say how to resume, exit 130 without a traceback; the same command resumes exactly. A second Ctrl-C ends
at once and leaves the last complete checkpoint usable. The model uses dropout and the data a random
augmentation, so a generator restored wrongly changes the digest."""

import os
import pty
import random
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.rundir import read_events
from cluster.runtime.checkpoint import latest_checkpoint
from tests.helpers import REPO

pytestmark = [pytest.mark.slow]
# The example package's model (with dropout) and data (with a random jitter), found through PYTHONPATH.
COMMAND = (sys.executable, "-m", "jobs.train", "--config-dir", "examples/myconf", "model=resmlp", "data=shapes",
           "model.dropout=0.1", "data.jitter=0.1", "train.steps=700", "train.log_every_steps=10")
ENV = {**os.environ, "PYTHONPATH": str(REPO / "examples")}


def run_train(*overrides: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*COMMAND, *overrides], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def in_terminal(run_dir: Path, *overrides: str, after_step: int, presses: int, gap_s: float = 0.0,
                timeout: float = 240) -> tuple[int, str]:
    """``python -m jobs.train`` on a pseudo-terminal; Ctrl-C ``presses`` times (``gap_s`` apart) once its progress
    line shows ``after_step``. The exit code and everything it printed."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: the terminal's foreground process, as in a shell
        try:
            os.chdir(REPO)
            os.execve(sys.executable, [*COMMAND, *overrides, f"hydra.run.dir={run_dir}"], ENV)
        finally:
            os._exit(127)  # never back into pytest
    output, pressed, deadline = b"", 0, time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([terminal], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(terminal, 65536)
            except OSError:  # the child is gone and the terminal closed
                break
            if not chunk:
                break
            output += chunk
        steps = [int(s) for s in re.findall(rb"step (\d+)/", output)]
        if pressed < presses and steps and steps[-1] >= after_step:
            os.write(terminal, b"\x03")  # what the Ctrl-C key sends; the terminal turns it into SIGINT
            pressed += 1
            time.sleep(gap_s)
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def digest(output: str) -> str:
    found = re.search(r"param digest: ([0-9a-f]{64})", output)
    assert found, output[-3000:]
    return found.group(1)


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> str:
    """The digest of an uninterrupted run (checkpointing more often changes nothing in it)."""
    return digest(run_train(f"hydra.run.dir={tmp_path_factory.mktemp('whole')}").stdout)


def test_ctrl_c_saves_the_step_it_stops_at_and_the_same_command_resumes_exactly(tmp_path, whole):
    at = random.Random().randint(20, 350)  # 350 steps left: a few seconds, to stop in
    code, shown = in_terminal(tmp_path / "cut", after_step=at, presses=1)
    assert code == 130, shown[-3000:]
    stopped = [e for e in read_events(tmp_path / "cut") if e["event"] == "stopped"]
    assert len(stopped) == 1 and stopped[0]["cause"] == "interrupt" and stopped[0]["step"] >= at, stopped
    step = stopped[0]["step"]
    assert f"stopped at step {step} (Ctrl-C); run the same command to resume" in shown, shown[-3000:]
    assert "Traceback" not in shown and "KeyboardInterrupt" not in shown, shown[-3000:]
    assert latest_checkpoint(tmp_path / "cut" / "checkpoints").name == f"step-{step:06d}"  # nothing lost
    again = run_train(f"hydra.run.dir={tmp_path / 'cut'}")
    assert digest(again.stdout) == whole
    assert [e["step"] for e in read_events(tmp_path / "cut") if e["event"] == "resumed"] == [step]


def test_a_second_ctrl_c_ends_at_once_and_the_last_checkpoint_still_resumes(tmp_path, whole):
    code, shown = in_terminal(tmp_path / "cut", "train.checkpoint_every_steps=50",
                              after_step=random.Random().randint(100, 350), presses=2,
                              gap_s=0.2)
    assert code == 130, shown[-3000:]
    assert "killed at once (second Ctrl-C); the checkpoint of step" in shown, shown[-3000:]
    assert "Traceback" not in shown, shown[-3000:]
    again = run_train("train.checkpoint_every_steps=50", f"hydra.run.dir={tmp_path / 'cut'}")
    assert digest(again.stdout) == whole
