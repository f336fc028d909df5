"""Errors as the one line that logs, events and messages show, and errors a user must act on."""


def one_line(error: BaseException) -> str:
    """``Type: last line of the message``: the last line is where torch and gloo put the cause."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[-1] if text else ''}"


class CheckpointError(RuntimeError):
    """A checkpoint in the run directory cannot be used; the message says how to proceed."""
