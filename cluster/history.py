"""The user's recent runs and sweeps, so that ``python -m cluster status`` with no path can list them.

Each submission (a sweep, a Slurm run, ``python -m cluster run``) appends one line to
``$XDG_STATE_HOME/clusterjobs/history.jsonl`` (``~/.local/state/...`` by default; ``$CLUSTERJOBS_HISTORY``
names another file). The file only points at directories: what they hold is read when asked, and a
directory deleted since is skipped. Writing it never fails a submission.
"""

import datetime
import os
from pathlib import Path
from typing import Any

from cluster.rundir import append_jsonl, read_jsonl, write_atomically

VARIABLE = "CLUSTERJOBS_HISTORY"
KEEP = 1000  # lines kept when the file is trimmed: far more than anyone lists


def path() -> Path:
    if os.environ.get(VARIABLE):
        return Path(os.environ[VARIABLE])
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(state) / "clusterjobs" / "history.jsonl"


def record(directory: Path, kind: str, *, members: int = 1, job: str = "") -> None:
    """Note a submission: a sweep (``kind`` slurm or local) of ``members``, or a run (``kind`` run) as ``job``."""
    entry = {"time": datetime.datetime.now().isoformat(timespec="seconds"), "path": str(directory.resolve()),
             "kind": kind, "members": members, "job": job}
    try:
        file = path()
        file.parent.mkdir(parents=True, exist_ok=True)
        append_jsonl(file, entry)
        if file.stat().st_size > KEEP * 400:  # keep it small: trim to the newest lines
            write_atomically(file, "\n".join(file.read_text().splitlines()[-KEEP:]) + "\n")
    except OSError:  # a read-only home: the run matters, its listing does not
        pass


def recent(limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` submissions whose directory still exists, newest first, each directory once."""
    seen: set[str] = set()
    found = []
    for entry in reversed(read_jsonl(path())):
        if entry.get("path") in seen or not Path(entry.get("path", "")).is_dir():
            continue
        seen.add(entry["path"])
        found.append(entry)
        if len(found) == limit:
            break
    return found
