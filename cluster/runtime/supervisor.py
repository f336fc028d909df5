"""One task's side of the stop-save-requeue protocol, around a training loop that knows none of it.

The loop asks ``should_stop()`` at each step boundary and saves when told; the supervisor records
what happened in the events log, reads the cause of a warning from Slurm, charges the requeue to
its budget, requeues, and ends the task with ``JobEnd``. Failures go through ``failed()``, which
decides between a retry and the end without talking to other ranks (they may be dead).
"""

import datetime
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from cluster.bad_nodes import NODE_FAULTS, NoNodesLeftError, keep_out, lost_by_slurm, remember, remembered
from cluster.environment import TaskEnvironment
from cluster.errors import ClusterError, RunDirectoryBusyError, literal, one_line, spelled
from cluster.requeue import (
    EXIT_INTERRUPTED,
    EXIT_REQUEUE,
    HANG_TIMEOUT_S,
    REQUEUEABLE,
    JobEnd,
    RequeueBudget,
    budget_left,
    note_on_job,
    request_requeue,
    restart_number,
    signal_cause,
    unexplained_end,
)
from cluster.rundir import EventLog, RunDir, check_unclaimed, claim, read_events
from cluster.runtime.checkpoint_writer import SaveResult
from cluster.runtime.health import check_all, unhealthy
from cluster.runtime.heartbeat import Beat, Verdict, Watchman, kill_ranks_here
from cluster.runtime.stop_vote import StopVote
from cluster.slurm import commands
from cluster.slurm.commands import own_job_id
from cluster.warning_signals import StopFlag


class BudgetSpentError(RuntimeError):
    """The job would come back once more than its requeue budget allows."""


class HealthCheckError(ClusterError, RuntimeError):
    """The node check before training failed where no other node can take over."""


def is_peer_failure(error: BaseException) -> bool:
    """An error that says another rank is gone (a crash elsewhere), rather than a fault of this rank."""
    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(
        part in text for part in ("gloo", "Connection reset by peer", "Connection closed by peer", "Timed out"))


class Supervisor:
    """Installs the warning handlers at once; ``start`` then records the run (all ranks call it).

    ``spell`` names the settings in messages (``cluster.errors``): the budgets (``preemption``,
    ``time_limit``, ``failure``) and ``signal_lead_s``, as the caller's users know them.
    """

    def __init__(self, env: TaskEnvironment, run_dir: Path, *, budget: RequeueBudget, warning_signal: str = "USR2",
                 lead_s: float, hang_timeout_s: float = HANG_TIMEOUT_S, device: torch.device,
                 spell: Callable[[str], str] = str):
        self.env, self.budget, self.lead_s, self.spell = env, budget, lead_s, spell
        self.run_dir, self.hang_timeout_s = run_dir, hang_timeout_s
        # SIGTERM is a last-chance warning too: Slurm sends it KillWait seconds before SIGKILL. SIGINT (Ctrl-C, or
        # srun passing it on) stops the run at the next step boundary, saved, and nothing brings it back.
        self.warning_signal = warning_signal
        self.flag = StopFlag((warning_signal, "TERM", "INT")).install()
        self.vote = StopVote(self.flag, device)
        self.began = time.monotonic()
        self.history = read_events(run_dir)  # read before this run writes anything
        self.restart = restart_number(env, self.history)
        self.log = EventLog(run_dir, rank=env.rank, job=env.job_id, restart=self.restart)
        self.slowest_save_s = max((e.get("seconds", 0.0) for e in self.history if e.get("event") == "checkpointed"),
                                  default=0.0)
        self._warned = False
        self.step: int | None = None  # the last step boundary (or the step resumed from)
        self.stepped = False  # whether a training step has ended in this run (set-up errors come before)
        self.bad_nodes = remembered(run_dir) if budget.exclude_bad_nodes else set()  # kept out of the next runs
        self.watchman: Watchman | None = None  # this rank's heartbeat and hang watcher, from start() on

    def start(self) -> None:
        """Record this run; end it at once when the previous one was lost and the failure budget is spent."""
        dist.barrier()  # every rank has read the history before rank 0 adds to it
        refusal = [self._claim() if self.env.is_main else ""]
        dist.broadcast_object_list(refusal, src=0)
        if refusal[0]:  # another live job trains here: end without a word in its events, and without a requeue
            reason = spelled(refusal[0], self.spell)
            if self.env.is_main:
                print(f"error: {reason}", flush=True)
                note_on_job(self.env, f"ended: {reason}"[:240])
            raise JobEnd(1)
        lost = unexplained_end(self.history, self.env.job_id, self.restart)
        if lost is not None:
            allowed, phrase = budget_left(self.budget, self.history, "lost", self.spell)
            if self.env.is_main:
                self.log.record("lost", cause="lost", last_event=lost.get("event"), step=lost.get("step"),
                                reason="the previous run ended without a word (node failure or SIGKILL)")
            if not allowed:
                self._give_up(f"the previous run was lost and the {phrase}")
        if self.env.is_main:
            self.log.record("started", nodes=self.env.num_nodes, world_size=self.env.world_size,
                            launcher=self.env.started_by, host=os.uname().nodename,
                            **({"nodelist": os.environ.get("SLURM_JOB_NODELIST", "")}
                               if self.env.started_by == "slurm" else {}))
            self._check_lead_time(self.slowest_save_s)
            self._remember_lost_nodes()
        self._start_watching()

    # --- hangs (cluster.runtime.heartbeat) and bad nodes (cluster.bad_nodes) ---------------------------------

    def _start_watching(self) -> None:
        self.watchman = Watchman(RunDir(self.run_dir).heartbeats, rank=self.env.rank, world_size=self.env.world_size,
                                 run=f"{self.env.job_id}/{self.restart}", timeout_s=self.hang_timeout_s,
                                 on_hang=self._hung).start()

    def _stop_watching(self) -> None:
        if self.watchman is not None:
            self.watchman.stop()

    def _hung(self, verdict: Verdict, beats: dict[int, Beat]) -> None:
        """The watcher's end of a hung job (its thread; the main thread is stuck): one rank records it, excludes the
        suspects' nodes, requeues within the failure budget, and ends every rank it can reach."""
        assert self.watchman is not None
        if not self.watchman.claim_verdict():  # another rank's watcher saw it first, and acts
            return
        reason = verdict.describe()
        self.log.record("hung", kind=verdict.kind, ranks=list(verdict.ranks), nodes=list(verdict.hosts),
                        step=verdict.step, seconds=round(verdict.seconds, 1), reason=reason)
        print(f"error: {reason}: ending the job", flush=True)
        note_on_job(self.env, f"hung: {reason}"[:240])
        try:
            code = self._come_back("hang", verdict.step, reason, suspects=[h for h in verdict.hosts if h != "?"])
        except BudgetSpentError as spent:
            if not self.env.is_main:  # rank 0 records the end of a job that may not come back; it is stuck
                self.log.record("failed", kind="final", reason=str(spent))
            if self.env.started_by == "slurm":  # the ranks stuck in a collective would hold the nodes until its timeout
                commands.cancel_quietly(own_job_id())
            code = 1
        self._stop_watching()  # this rank leaves on purpose
        kill_ranks_here(beats)
        os._exit(code)

    def _remember_lost_nodes(self) -> None:
        """Nodes of the previous run that Slurm has since lost are bad nodes too."""
        if self.env.started_by != "slurm" or not self.budget.exclude_bad_nodes:
            return
        lost = lost_by_slurm(self.history, job=self.env.job_id, restart=self.restart)
        if set(lost) - self.bad_nodes:
            remember(self.run_dir, self.log, lost, reason="Slurm lost it during the previous run ("
                     + ", ".join(f"{node}: {state}" for node, state in sorted(lost.items())) + ")")
            self.bad_nodes |= set(lost)

    def _exclusions(self, suspects: list[str], *, reason: str = "implicated in this run's failure") -> list[str]:
        """Record the ``suspects`` as bad nodes; every node the next run must not get (BudgetSpentError when too few
        are left for the job)."""
        if self.env.started_by != "slurm" or not self.budget.exclude_bad_nodes:
            return []
        new = sorted(set(suspects) - self.bad_nodes)
        if new:
            remember(self.run_dir, self.log, new, reason=reason)
            self.bad_nodes |= set(new)
        if not self.bad_nodes:
            return []
        try:
            return keep_out(self.bad_nodes, own_job_id())
        except NoNodesLeftError as error:
            self._give_up(error.phrase(self.spell))
            raise  # pragma: no cover (_give_up raises)

    def _come_back(self, cause: str, step: int | None, text: str, *, suspects: list[str],
                   why: str = "implicated in this run's failure", error: BaseException | None = None) -> int:
        """Requeue after a failure (without the bad nodes) when the budget allows; the exit code, or
        BudgetSpentError (``error``: what this rank saw, if anything)."""
        if self.env.started_by not in REQUEUEABLE:
            self.log.record("failed", kind="final", reason=f"{text}; nothing here restarts the job")
            return 1
        allowed, phrase = budget_left(self.budget, self.history, cause, self.spell)
        if not allowed:
            self._give_up(f"{text}, and the {phrase}", error)
        self._requeue(cause, step, phrase, exclude=self._exclusions(suspects, reason=why))
        return EXIT_REQUEUE

    def check_health(self, device: torch.device) -> None:
        """``health_check``: every rank checks its node (``cluster.runtime.health``); a node that fails or is far
        slower than the others is kept out and the job requeued before it trains (every rank leaves)."""
        results = check_all(device)
        bad = unhealthy(results)
        if self.env.is_main:
            best: dict[str, float] = {}
            for result in results:
                best[result.host] = max(best.get(result.host, 0.0), result.seconds)
            self.log.record("health", ms={host: round(s * 1e3, 3) if s != float("inf") else None
                                          for host, s in sorted(best.items())}, bad=bad)
        if not bad:
            return
        reason = "; ".join(f"{host}: {why}" for host, why in sorted(bad.items()))
        if self.env.started_by != "slurm":  # one machine: nowhere else to go
            raise HealthCheckError(f"the health check failed ({literal(reason)}); this machine cannot train")
        if self.env.is_main:
            print(f"error: the health check failed ({reason}): requeueing the job without "
                  f"{', '.join(sorted(bad))}", flush=True)
            self._come_back("health", None, f"the health check failed ({reason})", suspects=sorted(bad),
                            why="failed the health check")
        self._stop_watching()
        raise JobEnd(EXIT_REQUEUE)

    def _claim(self) -> str:
        """Rank 0 of a Slurm job claims the run directory for its job; why it may not (a template), or ""."""
        if self.env.started_by != "slurm":
            return ""  # a local run holds the directory's lock (cluster.rundir.hold) from its launcher
        own = own_job_id()
        try:
            check_unclaimed([self.run_dir], allowed=own)
        except RunDirectoryBusyError as error:
            return error.template
        claim(self.run_dir, own)
        return ""

    def should_stop(self, step: int, *, save_wanted: bool = False) -> bool:
        """Whether all ranks agreed to stop at this step boundary (a warning reached some rank). ``save_wanted``:
        this rank's clock says a checkpoint is due; ``save_agreed`` says when all ranks save for it."""
        self.step, self.stepped = step, True
        return self.vote.poll(step, save_wanted=save_wanted)

    @property
    def save_agreed(self) -> bool:
        """Whether all ranks agreed, at this step boundary, that a checkpoint is due by time."""
        return self.vote.save_agreed

    def resumed(self, step: int) -> None:
        """Set-up is over; training goes on from ``step``."""
        self.step = step
        if self.env.is_main and step:
            self.log.record("resumed", step=step)

    def saved(self, result: SaveResult) -> None:
        """The checkpoint writer's report, on every rank."""
        if not self.env.is_main:
            return
        if result.error:
            self.log.record("checkpoint-failed", step=result.step, error=result.error,
                            reason="the previous checkpoint stays the newest valid one")
            print(f"warning: checkpoint at step {result.step} failed ({result.error}); "
                  "the previous checkpoint stays the one to resume from", flush=True)
            return
        self.log.record("checkpointed", step=result.step, seconds=round(result.write_s, 3),
                        stall_seconds=round(result.stall_s, 4))
        self._check_lead_time(result.write_s)

    def stopped(self, step: int) -> None:
        """All ranks stopped at ``step`` and saved it: find the cause, requeue if allowed, end the task."""
        self.vote.close()
        self._stop_watching()
        cause = [self._cause() if self.env.is_main else ""]
        dist.broadcast_object_list(cause, src=0)
        allowed, phrase = (True, "") if cause[0] in ("requeued", "cancelled", "interrupt") else budget_left(
            self.budget, self.history, cause[0], self.spell)
        if self.env.is_main:
            waited = time.monotonic() - (self.flag.at or time.monotonic())
            self.log.record("signalled", cause=cause[0], signal=self.flag.received, step=step,
                            seconds_to_saved=round(waited, 3))
        if cause[0] == "interrupt":
            if self.env.is_main:
                self.log.record("stopped", cause="interrupt", step=step, reason="Ctrl-C (SIGINT)")
                print(f"stopped at step {step} (Ctrl-C), checkpoint saved: run the same command to resume", flush=True)
            raise JobEnd(EXIT_INTERRUPTED)
        if cause[0] in ("requeued", "cancelled"):  # someone else ends this run; Slurm knows what comes next
            if self.env.is_main:
                self.log.record(cause[0], step=step, reason=f"{cause[0]} by Slurm (a node it lost) or from outside "
                                "(scontrol requeue, scancel)")
            raise JobEnd(0)
        if not allowed:
            self._give_up(f"stopped by {cause[0]} at step {step}, and the {phrase}")
        if self.env.started_by not in REQUEUEABLE:
            if self.env.is_main:
                self.log.record("stopped", cause=cause[0], step=step, reason="nothing here restarts the job")
                print(f"stopped at step {step} by {self.flag.received}, checkpoint saved: "
                      "run the same command again to resume", flush=True)
            raise JobEnd(128 + int(getattr(signal, "SIG" + (self.flag.received or "TERM")).value))
        if self.env.is_main:
            self._requeue(cause[0], step, phrase)
        raise JobEnd(EXIT_REQUEUE)

    def failed(self, error: BaseException, *, step: int | None, deterministic: bool) -> None:
        """This rank saw ``error``: retry the job within the failure budget, or end it (re-raising).

        ``deterministic``: an error a retry would only repeat (a configuration error, a diverged loss).
        """
        kind = "peer" if is_peer_failure(error) else ("config" if deterministic else "exception")
        text = one_line(error, self.spell)
        # The node to blame: a peer's that died without a word (its heartbeat stopped), or this one when the error
        # says its hardware failed.
        decided = self.watchman is not None and self.watchman.verdict_file.exists()  # a watcher found a hang
        suspects = self.watchman.suspects() if kind == "peer" and self.watchman and not decided else (
            [os.uname().nodename] if NODE_FAULTS.search(str(error)) else [])
        self.log.record("failed", kind=kind, step=step, error=text[:500], host=os.uname().nodename,
                        **({"suspects": suspects} if suspects else {}))
        self._stop_watching()  # this rank leaves on purpose: its silence from now on means nothing
        if decided:  # the watcher that found the hang requeued the job, or ended it
            raise JobEnd(EXIT_REQUEUE) from error
        if self.env.started_by not in REQUEUEABLE:
            raise error  # nothing here restarts the job: torchrun's --max-restarts or the user decide
        if kind == "config":
            self._give_up(f"an error a retry would repeat ({text[:500]})", error)
        again = [e for e in self.history if e.get("event") == "failed" and e.get("kind") == "exception"
                 and e.get("step") == step and e.get("error") == text[:500]]
        if kind == "exception" and again:
            self._give_up(f"the same exception at step {step} twice ({text[:500]})", error)
        self._come_back("failure", step, text[:500], suspects=suspects, error=error)
        raise JobEnd(EXIT_REQUEUE) from error

    def finished(self, step: int) -> None:
        self.vote.close()
        self.flag.uninstall()
        self._stop_watching()
        if self.env.is_main:
            self.log.record("finished", step=step, seconds=round(time.monotonic() - self.began, 3))

    def _requeue(self, cause: str, step: int | None, phrase: str, *, exclude: list[str] | None = None) -> None:
        """Ask for the next run, without the bad nodes (those found now, ``exclude``, or remembered)."""
        if exclude is None:
            exclude = self._exclusions([])
        problem = request_requeue(self.env, exclude=exclude)
        self.log.record("requeued", cause=cause, step=step, budget=phrase,
                        **({"excluded": exclude} if exclude else {}), **({"problem": problem} if problem else {}))

    def _cause(self) -> str:
        if self.flag.received == "INT" and self.warning_signal != "INT":
            return "interrupt"
        timeout = float(os.environ.get("SUBMITIT_LOCAL_TIMEOUT_S", 0) or 0)
        return signal_cause(self.env, lead_s=self.lead_s, now=datetime.datetime.now(),
                            started_s=time.monotonic() - self.began, local_timeout_s=timeout)

    def _check_lead_time(self, save_s: float) -> None:
        if save_s > self.lead_s and not self._warned:
            self._warned = True
            message = (f"a checkpoint took {save_s:.1f} s, longer than the {self.lead_s:g} s between the warning "
                       "signal and the end: a stop would lose the steps since the last checkpoint; "
                       f"raise {self.spell('signal_lead_s')}")
            self.log.record("warning", reason=message)
            print(f"warning: {message}", flush=True)

    def _give_up(self, reason: str, error: BaseException | None = None) -> None:
        if self.env.is_main or error is not None:
            self.log.record("failed", kind="final", reason=reason)
        note_on_job(self.env, f"ended: {reason}"[:240])
        raise BudgetSpentError(f"job ends: {reason}") from error
