"""One run directory, one live run: a lock that the kernel releases when its holder dies."""

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = ".lock"


class RunDirectoryBusyError(RuntimeError):
    """Another live process is running in this run directory."""


def check_writable(run_dir: Path) -> None:
    """Fail early, with the path, when the run directory cannot take files."""
    try:
        try:
            run_dir.mkdir(parents=True)  # a directory this process just made is its own: nothing to probe
        except FileExistsError:  # (one file less per member of a big sweep)
            probe = run_dir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
    except OSError as error:
        raise PermissionError(
            f"cannot write to the run directory {run_dir} ({error.strerror or error}); "
            "choose a writable one with hydra.run.dir=PATH"
        ) from error


@contextlib.contextmanager
def hold_run_dir(run_dir: Path) -> Iterator[None]:
    """Hold the run directory's lock for the block, or raise if another process holds it."""
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise RunDirectoryBusyError(
            f"run directory {run_dir} is in use by {holder}; wait for it to end, or choose another hydra.run.dir"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {os.uname().nodename}\n")
        handle.flush()
        yield
    finally:
        handle.close()
