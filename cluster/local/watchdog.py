"""End a task when the process that launched it is gone.

submitit's local controller is built to outlive the Python session that started it
(``submitit/local/local.py``, ``start_controller``). For a local run that is wrong: a user who
kills the launcher (Ctrl-C, SIGKILL, a closed terminal) expects training to stop, and the next
run in the same directory must not race an orphan writing checkpoints.
"""

import os
import threading
import time
from pathlib import Path

POLL_S = 0.5


def process_alive(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (killed, not yet reaped) counts as gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    state = next((line for line in status.splitlines() if line.startswith("State:")), "State: ?")
    return state.split()[1] != "Z"  # "State:\tZ (zombie)"


def exit_when_gone(pid: int, *, exit_code: int = 143) -> threading.Thread:
    """Start a daemon thread that ends this process at once when ``pid`` is gone."""

    def watch() -> None:
        while process_alive(pid):
            time.sleep(POLL_S)
        print(f"launcher process {pid} is gone: stopping this task", flush=True)
        os._exit(exit_code)  # no clean-up: a collective may be blocked in this very process

    thread = threading.Thread(target=watch, name="launcher-watchdog", daemon=True)
    thread.start()
    return thread
