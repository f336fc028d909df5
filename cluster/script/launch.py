"""``python -m cluster run [options] -- COMMAND [ARGS...]``: any command as every rank of a job (login-node side).

On Slurm (the default) one job is submitted whose tasks each run the command with torchrun's variables
(``cluster.script.task``); ``--local N`` runs N ranks on this machine, in the foreground, and starts them
again when they ask to come back (``EXIT_REQUEUE``, or a warning signal sent to this process: ``kill -USR2``
rehearses a preemption). The options are ``SlurmResources``'s fields and ``RequeueBudget``'s, with their docs.
Torch-free: a login node runs it.
"""

import argparse
import dataclasses
import datetime
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from cluster import history, rundir
from cluster.by_name import ByName
from cluster.environment import TaskEnvironment, variables_for
from cluster.errors import ClusterError, SettingError, literal
from cluster.local.interrupt import Interrupted, interrupted_message
from cluster.requeue import EXIT_INTERRUPTED, HANG_TIMEOUT_S, RequeueBudget
from cluster.rundir import EventLog, RunDir, read_events
from cluster.script.task import CommandFailedError, command_environment, decide, ending_of, exit_cause
from cluster.slurm.limits import check_against_cluster
from cluster.slurm.resources import SlurmResources
from cluster.slurm.sbatch import check_setup, follow, render_sbatch, submit

RUN_COMMAND = ByName("cluster.script.task", "run_command")
_GRACE_S = 10  # how long the other ranks of a local run may take to end after one has ended badly
_PYTHON = re.compile(r"^python[0-9.]*$")


def option(name: str) -> str:
    """A field's command-line option: ``tasks_per_node`` -> ``--tasks-per-node``."""
    return "--" + name.replace("_", "-")


def _field_docs(cls: type) -> dict[str, str]:
    """Each field's one-line doc: the comment after it in the class that defines it."""
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base):
            for line in inspect.getsource(base).splitlines():
                found = re.match(r"\s+(\w+): .*?  # (.*)$", line)
                if found:
                    docs[found.group(1)] = found.group(2)
    return docs


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``run``: the job's resources and budgets (their fields and docs), and how to run."""
    for cls in (SlurmResources, RequeueBudget):
        docs = _field_docs(cls)
        for field in dataclasses.fields(cls):
            default = field.default if field.default is not dataclasses.MISSING else None
            if isinstance(default, bool):
                parser.add_argument(option(field.name), action=argparse.BooleanOptionalAction, default=default,
                                    help=f"{docs[field.name]} (default: {default!r})")
            elif field.name in ("setup", "additional"):
                parser.add_argument(option(field.name), action="append", default=[], metavar="LINE" if
                                    field.name == "setup" else "FLAG=VALUE", help=f"{docs[field.name]} (repeatable)")
            else:
                parser.add_argument(option(field.name), type=type(default), default=default,
                                    help=f"{docs[field.name]} (default: {default!r})")
    parser.add_argument("--hang-timeout-s", type=float, default=HANG_TIMEOUT_S, metavar="S",
                        help="a rank of a command using the API silent this long (or no step ending) ends the job "
                        f"and names it (default: {HANG_TIMEOUT_S:g})")
    parser.add_argument("--health-check", action="store_true",
                        help="before a command using the API trains, check every node (a matrix multiply, an "
                        "all-reduce); keep a failing or far slower one out and requeue")
    parser.add_argument("--local", type=int, default=0, metavar="N",
                        help="run N ranks on this machine instead, in the foreground (Ctrl-C stops them)")
    parser.add_argument("--run-dir", type=Path, default=None,
                        help="where events, logs and checkpoints go (default: runs/COMMAND/DATE_TIME)")
    parser.add_argument("--dry-run", action="store_true", help="print the batch script and each rank's variables; "
                        "submit nothing")
    parser.add_argument("--wait", action="store_true", help="stay until the job ends (default: return at once)")


def _resources(args: argparse.Namespace) -> SlurmResources:
    pairs = []
    for item in args.additional:
        flag, sep, value = item.partition("=")
        if not sep:
            raise SettingError(f"{{k.additional}} {literal(repr(item))} is not FLAG=VALUE (like mail-type=END)")
        pairs.append((flag, value))
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(SlurmResources)}
    return SlurmResources(**{**values, "setup": tuple(args.setup), "additional": tuple(pairs)})


def _budget(args: argparse.Namespace) -> RequeueBudget:
    return RequeueBudget(**{field.name: getattr(args, field.name) for field in dataclasses.fields(RequeueBudget)})


def check_command(command: Sequence[str]) -> None:
    """The command exists here (an executable on PATH or a path), and a Python script it names is a file."""
    if not command:
        raise SettingError("no command given: put it after --, as in python -m cluster run --nodes 2 -- python "
                           "train.py")
    if shutil.which(command[0]) is None:
        raise SettingError(f"the command {literal(repr(command[0]))} does not exist here (not an executable on PATH, "
                           "nor a path to one); check its spelling, or give its full path")
    if _PYTHON.match(Path(command[0]).name) and len(command) > 1 and not command[1].startswith("-") \
            and command[1].endswith(".py") and not Path(command[1]).is_file():
        raise SettingError(f"the script {literal(repr(command[1]))} does not exist (from {Path.cwd()}); check the "
                           "path")


def default_run_dir(command: Sequence[str]) -> Path:
    """``runs/NAME/DATE_TIME``, NAME the script's (or the program's) name."""
    script = next((part for part in command[1:] if part.endswith(".py")), command[0])
    return Path("runs") / Path(script).stem / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")


def settings_for(resources: SlurmResources, budget: RequeueBudget, *,
                 hang_timeout_s: float = HANG_TIMEOUT_S, health_check: bool = False) -> dict[str, Any]:
    """What the command's ``cluster.start`` gets (``cluster.environment.SETTINGS_VARIABLE``)."""
    return {"signal": resources.signal, "signal_lead_s": resources.signal_lead_s,
            "requeue": dataclasses.asdict(budget), "hang_timeout_s": hang_timeout_s, "health_check": health_check}


def run(argv: Sequence[str]) -> int:
    """``python -m cluster run``: parse, check, then run locally or submit. The exit code."""
    argv = list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(
        prog="python -m cluster run", usage="%(prog)s [options] -- COMMAND [ARGS...]",
        description="Run COMMAND as every rank of a Slurm job (or of --local N ranks here), each with torchrun's "
        "variables (RANK, WORLD_SIZE, MASTER_ADDR, ...); it comes back after a preemption or the time limit within "
        "the requeue budgets. The options are a Slurm job's resources and the budgets, with their defaults.")
    add_options(parser)
    args = parser.parse_args(argv[:split])
    command = argv[split + 1:]
    check_command(command)
    budget = _budget(args)
    run_dir = args.run_dir or default_run_dir(command)
    resources = _resources(args)
    if args.local:
        if args.local < 1:
            raise SettingError("{k.local} must be at least 1 rank")
        rundir.check_writable(run_dir, setting="run_dir")
        try:
            return run_local(command, ranks=args.local, run_dir=run_dir, budget=budget,
                             settings=settings_for(resources, budget, hang_timeout_s=args.hang_timeout_s,
                                                 health_check=args.health_check))
        except Interrupted as stop:  # a second Ctrl-C
            print(interrupted_message(run_dir, stop, since=0), file=sys.stderr)
            return EXIT_INTERRUPTED
    check_setup(resources)
    settings = settings_for(resources, budget, hang_timeout_s=args.hang_timeout_s, health_check=args.health_check)
    log_dir = RunDir(run_dir).logs.resolve()
    if args.dry_run:
        print(render_sbatch(resources, folder=log_dir))
        print(f"# each of the {resources.world_size} task(s) runs: {shlex.join(command)}")
        print("# with RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR (the job's first node), "
              f"MASTER_PORT; {json.dumps(settings)} for cluster.start")
        return 0
    partition = check_against_cluster(resources)
    rundir.check_writable(run_dir, setting="run_dir")
    try:
        with rundir.hold(run_dir):
            rundir.check_unclaimed([run_dir])
            job = submit(RUN_COMMAND, command, str(run_dir.resolve()), settings, resources=resources,
                         folder=log_dir)
            rundir.claim(run_dir, job.job_id)
    except ClusterError:  # sbatch refused it, or another job trains there: leave no empty directory behind
        rundir.remove_if_unused(run_dir)
        raise
    history.record(run_dir, "run", job=job.job_id)
    print(f"submitted job {job.job_id} to partition {partition.name}: {resources.nodes} node(s) x "
          f"{resources.tasks_per_node} task(s), each running {shlex.join(command)}\n"
          f"run dir: {run_dir.resolve()}\n"
          f"status:  python -m cluster status {run_dir}   (logs, cancel likewise)", flush=True)
    if not args.wait:
        return 0
    follow(job, run_dir)
    print(f"job {job.job_id} finished")
    return 0


# --- --local N: a foreground controller, like torchrun's ----------------------------------------------------


def _pump(stream: IO[bytes], path: Path, echo: IO[bytes] | None) -> threading.Thread:
    """Copy a child's output to its log file (and to the terminal for rank 0) as it comes."""

    def copy() -> None:
        with path.open("ab") as log:
            for line in iter(stream.readline, b""):
                log.write(line)
                log.flush()
                if echo is not None:
                    echo.write(line)
                    echo.flush()

    thread = threading.Thread(target=copy, daemon=True)
    thread.start()
    return thread


def _die_with_parent() -> None:
    """In each child, between fork and exec: be killed when the controller dies (Linux), as torchrun's workers
    are. Nothing is imported or allocated here: libc was loaded before the fork (``_LIBC``)."""
    if _LIBC is not None:
        _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _load_libc() -> Any:
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:  # not Linux: children outlive a killed controller, as they would under a shell
        return None


_LIBC = _load_libc()  # loaded here, before any fork: the children's PR_SET_PDEATHSIG


def _local_env(rank: int, ranks: int, job_id: str, port: int = 0) -> TaskEnvironment:
    return TaskEnvironment(started_by="local", rank=rank, local_rank=rank, world_size=ranks, node_rank=0,
                           num_nodes=1, master_addr="127.0.0.1", master_port=port, job_id=job_id, restart_count=0)


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def run_local(command: Sequence[str], *, ranks: int, run_dir: Path, settings: dict[str, Any],
              budget: RequeueBudget) -> int:
    """Run ``ranks`` copies of the command here until they finish, or may not come back; the exit code."""
    run_dir.mkdir(parents=True, exist_ok=True)
    logs = RunDir(run_dir).logs
    logs.mkdir(parents=True, exist_ok=True)
    job_id = f"local-{os.getpid()}"
    received: list[str] = []

    def forward(number: int, frame: object) -> None:
        name = signal.Signals(number).name.removeprefix("SIG")
        if name == "INT" and "INT" in received:  # the second Ctrl-C: at once (checkpoints are written atomically)
            for child in children:
                child.kill()
            raise Interrupted(at_once=True)
        received.append(name)
        for child in children:  # a command using the API stops at a step boundary, saved (exit 130)
            if child.poll() is None:
                child.send_signal(number)

    children: list[subprocess.Popen[bytes]] = []
    for name in ("USR1", "USR2", "TERM", "INT", "HUP"):
        signal.signal(getattr(signal, f"SIG{name}"), forward)
    print(f"run dir: {run_dir.resolve()} ({ranks} rank(s); logs in {logs}); kill -USR2 {os.getpid()} rehearses a "
          "preemption, Ctrl-C stops", flush=True)
    with rundir.hold(run_dir):
        rundir.check_unclaimed([run_dir])
        restart = -1
        while True:
            restart += 1  # this attempt's number, in the events the controller writes
            received.clear()
            before = len(read_events(run_dir))
            port = _free_port()
            children = []
            pumps = []
            for rank in range(ranks):
                env = _local_env(rank, ranks, job_id, port)
                # The "local" source's variables (submitit's local executor names them): a command using the API
                # then knows that an exit with EXIT_REQUEUE brings it back.
                variables = {**command_environment(env, run_dir, settings), **variables_for("local", env)}
                if ranks > 1:  # as torchrun does: ranks sharing the cores would oversubscribe them (yours is kept)
                    variables.setdefault("OMP_NUM_THREADS", "1")
                child = subprocess.Popen(list(command), env=variables, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                         start_new_session=True, preexec_fn=_die_with_parent)
                assert child.stdout is not None and child.stderr is not None
                echo = rank == 0
                pumps += [_pump(child.stdout, logs / f"rank-{rank}.out", sys.stdout.buffer if echo else None),
                          _pump(child.stderr, logs / f"rank-{rank}.err", sys.stderr.buffer if echo else None)]
                children.append(child)
            codes, first_bad = _wait_all(children)
            for pump in pumps:
                pump.join(timeout=5)
            interrupted = "INT" in received
            ending = ending_of(run_dir, job_id, since=before)  # what a command using the API wrote this time
            code = codes[first_bad] if first_bad is not None else 0  # the rank that ended badly first: the cause
            if interrupted:
                if ending:  # the command used the API: it saved the step it stopped at
                    print(interrupted_message(run_dir, Interrupted(at_once=False), since=before), file=sys.stderr)
                else:
                    EventLog(run_dir, rank=0, job=job_id, restart=restart).record("stopped", cause="interrupt",
                                                                                   reason="Ctrl-C")
                    print("stopped (Ctrl-C); run the same command again to resume", file=sys.stderr)
                return EXIT_INTERRUPTED
            if ending:  # the command used the API and decided
                if ending == "requeued":
                    print("ranks saved and asked to come back: starting them again", file=sys.stderr, flush=True)
                    continue
                return 0 if ending == "finished" else (code if code > 0 else 1)
            warning = next((name for name in received if name != "INT"), None)
            cause = exit_cause(code, warning=warning, warning_cause="signal")
            env = _local_env(0, ranks, job_id)
            try:
                decide(run_dir, env, restart=restart, code=code, cause=cause, budget=budget, spell=option)
            except SystemExit as end:  # JobEnd: start again
                if end.code:
                    print(f"ranks ended ({cause}, exit code {code}): starting them again", file=sys.stderr, flush=True)
                    continue
                return 0
            except CommandFailedError as error:
                print(f"error: {error}", file=sys.stderr)
                return code if code > 0 else 1
            return 0


def _wait_all(children: list["subprocess.Popen[bytes]"]) -> tuple[list[int], int | None]:
    """Wait for every child; once one has ended badly, the others get ``_GRACE_S`` to end, then are killed.
    Their exit codes, and which one ended badly first (None: none did)."""
    bad_since: float | None = None
    first_bad: int | None = None
    while any(child.poll() is None for child in children):
        if first_bad is None:
            first_bad = next((i for i, child in enumerate(children) if child.returncode not in (None, 0)), None)
            bad_since = time.monotonic() if first_bad is not None else None
        if bad_since is not None and time.monotonic() - bad_since > _GRACE_S:
            for child in children:
                if child.poll() is None:
                    child.kill()
        time.sleep(0.1)
    if first_bad is None:  # they all ended between two looks
        first_bad = next((i for i, child in enumerate(children) if child.returncode != 0), None)
    return [child.returncode for child in children], first_bad
