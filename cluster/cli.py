"""``python -m cluster``: run any command as a job; watch, follow, cancel, retry and collect a sweep (or one run).

Exit codes: 0 every member COMPLETED; 1 some ended badly (FAILED, CANCELLED, TIMEOUT, ...) and none is
still queued; 3 some are still pending or running; 2 a usage error (a wrong path, no such member).
"""

import argparse
import collections
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cluster import history
from cluster.errors import ClusterError
from cluster.rundir import check_unclaimed
from cluster.slurm import commands
from cluster.slurm.commands import ENDED_BADLY
from cluster.sweep.array_task import spans
from cluster.sweep.local_queue import cancel_members, start_queue
from cluster.sweep.manifest import Manifest, Member, NotASweepError, find_manifest, load_submissions
from cluster.sweep.status import (
    STILL_RUNNING,
    USAGE,
    exit_code,
    member_logs,
    sweep_status,
    varying_overrides,
)


def status(args: argparse.Namespace) -> int:
    if args.path is None:
        return recent_runs(args.last)
    manifest = find_manifest(args.path)
    statuses, source = sweep_status(manifest)
    counts = collections.Counter(s.state for s in statuses)
    wanted = {state.strip().upper() for state in args.state.split(",")} if args.state else None
    shown = [s for s in statuses if wanted is None or s.state in wanted]
    if args.json:
        print(json.dumps({"sweep_dir": manifest.sweep_dir, "source": source, "counts": dict(counts),
                          "pack": manifest.pack, "members": [s.as_dict() for s in shown]}, indent=1))
        return exit_code(statuses)
    # The summary first: with 10,000 members the table scrolls it away.
    print(f"{len(statuses)} member(s): " + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
          + f" (states from {source})" + (f"; showing {len(shown)} {args.state.upper()}" if wanted else ""))
    labels = varying_overrides(manifest.members)
    validated = any(s.val_loss is not None for s in statuses)  # a column only for sweeps that evaluate
    packed = manifest.pack > 1  # which allocation (array task) holds which member
    rows = [("member", "state", *(("allocation",) if packed else ()), "restarts", "step", "loss",
             *(("val_loss",) if validated else ()), "ranks", "elapsed", "overrides")]
    for s in shown:
        total = f"/{s.member.steps}" if s.member.steps else ""
        val_loss = (_number(s.val_loss),) if validated else ()
        rows.append((str(s.member.index), s.state, *((s.member.slurm_id,) if packed else ()), str(s.restarts),
                     f"{s.step}{total}", _number(s.loss), *val_loss, "->".join(map(str, s.ranks)) or "-",
                     s.elapsed or "-", labels[s.member.index]))
    _print_table(rows)
    for s in shown:
        if s.error:
            print(f"member {s.member.index} {s.state}: {s.error}")
        if s.hangs:
            print(f"member {s.member.index} hung at {s.hangs[-1]}" + (f" ({len(s.hangs)} hangs)" if len(s.hangs) > 1
                                                                      else ""))
        if s.bad_nodes:
            print(f"member {s.member.index} keeps out bad node(s): {', '.join(s.bad_nodes)}")
    return exit_code(statuses)


def recent_runs(last: int) -> int:
    """``status`` with no path: the user's recent sweeps and runs (``cluster.history``), newest first."""
    entries = history.recent(last)
    if not entries:
        print(f"no runs or sweeps on record in {history.path()}; submit one, or give a path: "
              "python -m cluster status DIR")
        return 0
    rows = [("submitted", "kind", "members", "state", "progress", "path")]
    for entry in entries:
        try:
            manifest = find_manifest(Path(entry["path"]))
        except (NotASweepError, OSError, ValueError):  # deleted or rewritten since: nothing to say of it
            continue
        statuses, _ = sweep_status(manifest)
        counts = collections.Counter(s.state for s in statuses)
        done = sum(s.step for s in statuses)
        steps = sum(s.member.steps for s in statuses)
        progress = f"{100 * done / steps:.0f}% of steps" if steps else f"step {done}"
        kind = "run" if manifest.kind == "run" else f"sweep ({manifest.kind})"
        rows.append((entry["time"].replace("T", " "), kind, str(len(statuses)),
                     ", ".join(f"{n} {state}" for state, n in sorted(counts.items())), progress, entry["path"]))
    _print_table(rows)
    return 0


def _number(value: float | None) -> str:
    return f"{value:.4f}" if value is not None and math.isfinite(value) else str(value or "-")


def _print_table(rows: Sequence[Sequence[str]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


def _members(manifest: Manifest, indices: list[int]) -> list[Member]:
    by_index = {m.index: m for m in manifest.members}
    missing = [i for i in indices if i not in by_index]
    if missing:
        raise NotASweepError(f"no member {', '.join(map(str, missing))} in {manifest.sweep_dir}; it has members "
                             f"{min(by_index)}..{max(by_index)}")
    return [by_index[i] for i in indices] if indices else manifest.members


def logs(args: argparse.Namespace) -> int:
    manifest = find_manifest(args.path)
    member = _members(manifest, [args.member])[0]
    files = member_logs(manifest, member, args.rank)
    present = [f for f in files if f.is_file()]
    if not present:
        raise NotASweepError(f"no log of member {member.index} rank {args.rank} yet ({files[-1].name}); "
                             "it may still be pending: python -m cluster status " + manifest.sweep_dir)
    if args.follow:
        os.execvp("tail", ["tail", "-n", "+1", "-F", *map(str, present)])
    for path in present:
        print(f"==> {path} <==")
        print(path.read_text(errors="replace"), end="")
    return 0


def cancel(args: argparse.Namespace) -> int:
    manifest = find_manifest(args.path)
    members = _members(manifest, args.members)
    if manifest.kind == "local":
        cancelled = cancel_members(manifest, members)
        print(f"cancelled member(s) {', '.join(map(str, cancelled)) or 'none (every one had ended)'}")
        return 0
    ids = sorted({m.slurm_id for m in members}) if args.members else sorted({m.job_id for m in members})
    commands.cancel(ids)
    print(f"cancelled {' '.join(ids)}")
    named = {m.index for m in members}
    others = [m.index for m in manifest.members if m.slurm_id in ids and m.index not in named] if args.members else []
    if others:  # a pack: one allocation holds several members
        print(f"the same allocation(s) held member(s) {', '.join(map(str, others))}: cancelled with them "
              f"(python -m cluster retry {manifest.sweep_dir} sends them again)")
    return 0


def retry(args: argparse.Namespace) -> int:
    manifest = find_manifest(args.path)
    if manifest.kind == "run":
        raise NotASweepError(f"{manifest.sweep_dir} is a single run: run the same command again, it resumes "
                             "from its last checkpoint")
    statuses, _ = sweep_status(manifest)
    wanted = {"FAILED"} if args.failed else ENDED_BADLY
    again = [s.member for s in statuses if s.state in wanted]
    if not again:
        print(f"nothing to retry: no member is {' or '.join(sorted(wanted))}")
        return exit_code(statuses)
    if manifest.kind == "local":
        where = f"to a new local queue (pid {start_queue(manifest, again, parallelism=args.parallelism)})"
    else:
        check_unclaimed([Path(member.run_dir) for member in again])
        from cluster.sweep.arrays import submit_members  # submitit: only to submit (0.2 s to import)

        recorded = load_submissions(manifest.submissions_path)
        arrays = submit_members(manifest, [(member, recorded[member.index]) for member in again],
                                parallelism=len(again))
        where = f"as job {', '.join(arrays)}"
    print(f"resubmitted member(s) {spans([m.index for m in again]).replace(',', ', ')} {where}; "
          "each resumes from its own last checkpoint")
    return STILL_RUNNING


def collect(args: argparse.Namespace) -> int:
    from cluster.sweep.report import write_report  # matplotlib: only for this command

    manifest = find_manifest(args.path)
    report = write_report(manifest, metric=args.metric, mode=args.mode)
    print(report)
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m cluster", description=__doc__.split("\n\n")[0],
                                  epilog=__doc__.split("\n\n")[1])
    commands = top.add_subparsers(dest="command", required=True)
    commands.add_parser("run", add_help=False, help="run a command as every rank of a Slurm job (or --local N): "
                        "python -m cluster run [options] -- COMMAND [ARGS...]; run --help for the options")

    def command(run, help_text: str, *, path_optional: bool = False) -> argparse.ArgumentParser:
        cmd = commands.add_parser(run.__name__, help=help_text)
        cmd.add_argument("path", type=Path, nargs="?" if path_optional else None,
                         help="the sweep directory (or a member's or a single run's run directory)"
                         + ("; none: your recent runs and sweeps" if path_optional else ""))
        cmd.set_defaults(run=run)
        return cmd

    cmd = command(status, "a table of every member's state, progress and loss; with no path, your recent runs "
                  "and sweeps", path_optional=True)
    cmd.add_argument("--json", action="store_true", help="print JSON for scripts")
    cmd.add_argument("--state", default="", help="only members in these states (FAILED, RUNNING,PENDING, ...); "
                     "the summary line still counts them all")
    cmd.add_argument("--last", type=int, default=10, help="with no path: how many recent runs and sweeps to list")
    cmd = command(logs, "a member's log (rank 0 by default)")
    cmd.add_argument("member", type=int, nargs="?", default=0, help="member number (default 0)")
    cmd.add_argument("--rank", type=int, default=0, help="the rank whose log to show")
    cmd.add_argument("--follow", "-f", action="store_true", help="keep printing as the log grows")
    command(cancel, "cancel the sweep, or the members named").add_argument(
        "members", type=int, nargs="*", help="member numbers (default: every member)")
    cmd = command(retry, "resubmit the members that failed or were cancelled")
    cmd.add_argument("--failed", action="store_true", help="only FAILED members (not cancelled or timed out)")
    cmd.add_argument("--parallelism", type=int, default=1, help="members of a local sweep running at once")
    cmd = command(collect, "final metrics as a table and CSV, the best member, a loss plot")
    cmd.add_argument("--metric", default="final_loss", help="summary.json key to rank by (default final_loss)")
    cmd.add_argument("--mode", choices=["min", "max"], default="min", help="whether lower or higher is better")
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["run"]:
        from cluster.script.launch import option, run

        try:
            return run(argv[1:])
        except ClusterError as error:  # a bad option, a missing command, Slurm refusing or not answering
            print(f"error: {error.phrase(lambda name: 'run directory' if name == 'run_dir' else option(name))}",
                  file=sys.stderr)
            return USAGE
    args = parser().parse_args(argv)
    try:
        return args.run(args)
    except BrokenPipeError:  # `status | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error as Python flushes at exit
        return 0
    except (NotASweepError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return USAGE
    except ClusterError as error:  # a member's directory still in use, Slurm refusing or not answering
        print(f"error: {error.phrase(lambda name: 'run directory' if name == 'run_dir' else name)}",
              file=sys.stderr)
        return USAGE

