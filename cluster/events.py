"""The run directory's events log: what happened to a job across its requeues, one JSON line each.

``events.jsonl`` records started (restart, nodes), signalled (cause), checkpointed (step, seconds),
requeued, resumed (step), failed (reason), finished. It outlives every allocation, so it is also
what requeue budgets are counted from. Lines are appended with one ``write`` each (``O_APPEND``),
so ranks of one job, and runs that follow one another, never interleave inside a line.
"""

import json
import os
import time
from pathlib import Path
from typing import Any

EVENTS_FILE = "events.jsonl"


class EventLog:
    """Appends events for one task of one job (``job`` and ``restart`` say which run it was)."""

    def __init__(self, run_dir: Path, *, rank: int, job: str, restart: int):
        self.path = run_dir / EVENTS_FILE
        self.rank, self.job, self.restart = rank, job, restart

    def record(self, event: str, **fields: Any) -> dict[str, Any]:
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "event": event, "job": self.job,
                 "restart": self.restart, "rank": self.rank, **fields}
        line = (json.dumps(entry, sort_keys=False) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        return entry


def read_events(run_dir: Path) -> list[dict[str, Any]]:
    """Every event of a run directory, oldest first; a line cut short by a kill is skipped."""
    path = run_dir / EVENTS_FILE
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events
