"""Errors the library reports to a person, in its own terms, and the checks that raise them.

A message names the settings it is about as ``{k.NAME}`` (the library's own name: a field of
``SlurmResources``, an argument of a function). ``str(error)`` spells them as they are
(``partition``); a program that took those settings from elsewhere spells them its way with
``error.phrase(spell)``: the built-in trainer says ``cluster.partition``, a user's script can say
``--partition``. So the library never tells a user of its API to set a Hydra key.
"""

from collections.abc import Callable


class ClusterError(Exception):
    """An error a person must act on; the message says how. Settings appear as ``{k.NAME}``."""

    def __init__(self, template: str):
        super().__init__(template)
        self.template = template

    def phrase(self, spell: Callable[[str], str] = str) -> str:
        """The message with every setting spelled by ``spell`` (its library name by default)."""
        return spelled(self.template, spell)

    def __str__(self) -> str:
        return self.phrase()


class _Speller:
    def __init__(self, spell: Callable[[str], str]):
        self._spell = spell

    def __getattr__(self, name: str) -> str:
        return self._spell(name)


def spelled(template: str, spell: Callable[[str], str] = str) -> str:
    """A message template with each ``{k.NAME}`` replaced by ``spell(NAME)`` (``{{``, ``}}``: braces)."""
    return template.format(k=_Speller(spell))


class SettingError(ClusterError, ValueError):
    """A setting (or a combination of them) that cannot work; found before anything runs."""


class CheckpointError(ClusterError, RuntimeError):
    """A checkpoint in the run directory cannot be used; the message says how to proceed."""


class RunDirectoryBusyError(ClusterError, RuntimeError):
    """Another live process is running in this run directory."""


class SlurmUnavailableError(ClusterError, RuntimeError):
    """Slurm is not installed here, or its controller does not answer."""


class SubmissionRefusedError(ClusterError, RuntimeError):
    """sbatch refused the job; nothing was submitted."""


def literal(text: str) -> str:
    """``text`` for a message template: its braces kept as they are (a path, a user's value)."""
    return text.replace("{", "{{").replace("}", "}}")


def one_line(error: BaseException, spell: Callable[[str], str] = str) -> str:
    """``Type: last line of the message``: the last line is where torch and gloo put the cause."""
    text = (error.phrase(spell) if isinstance(error, ClusterError) else str(error)).strip()
    return f"{type(error).__name__}: {text.splitlines()[-1] if text else ''}"


def require_positive(**values: float) -> None:
    """Each named setting must be > 0."""
    for name, value in values.items():
        if value <= 0:
            raise SettingError(f"{{k.{name}}} must be positive, got {value}; set {{k.{name}}}=<a number > 0>")


def require_one_of(name: str, value: str, choices: tuple[str, ...]) -> None:
    """The setting ``name`` must be one of ``choices``."""
    if value not in choices:
        raise SettingError(f"unknown {{k.{name}}} {literal(repr(value))}; choose one of: {', '.join(choices)} "
                           f"({{k.{name}}}=NAME)")
