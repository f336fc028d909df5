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

from cluster.environment import TaskEnvironment
from cluster.errors import RunDirectoryBusyError, one_line, spelled
from cluster.requeue import (
    EXIT_INTERRUPTED,
    EXIT_REQUEUE,
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
from cluster.rundir import EventLog, check_unclaimed, claim, read_events
from cluster.runtime.checkpoint_writer import SaveResult
from cluster.runtime.stop_vote import StopVote
from cluster.slurm.commands import own_job_id
from cluster.warning_signals import StopFlag


class BudgetSpentError(RuntimeError):
    """The job would come back once more than its requeue budget allows."""


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
                 lead_s: float, device: torch.device, spell: Callable[[str], str] = str):
        self.env, self.budget, self.lead_s, self.spell = env, budget, lead_s, spell
        self.run_dir = run_dir
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
                            launcher=self.env.started_by, host=os.uname().nodename)
            self._check_lead_time(self.slowest_save_s)

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
                self.log.record(cause[0], step=step, reason=f"{cause[0]} from outside (scontrol/scancel)")
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
        self.log.record("failed", kind=kind, step=step, error=text[:500])
        if self.env.started_by not in REQUEUEABLE:
            raise error  # nothing here restarts the job: torchrun's --max-restarts or the user decide
        if kind == "config":
            self._give_up(f"an error a retry would repeat ({text[:500]})", error)
        again = [e for e in self.history if e.get("event") == "failed" and e.get("kind") == "exception"
                 and e.get("step") == step and e.get("error") == text[:500]]
        if kind == "exception" and again:
            self._give_up(f"the same exception at step {step} twice ({text[:500]})", error)
        allowed, phrase = budget_left(self.budget, self.history, "failure", self.spell)
        if not allowed:
            self._give_up(f"{text[:500]}, and the {phrase}", error)
        self._requeue("failure", step, phrase)
        raise JobEnd(EXIT_REQUEUE) from error

    def finished(self, step: int) -> None:
        self.vote.close()
        self.flag.uninstall()
        if self.env.is_main:
            self.log.record("finished", step=step, seconds=round(time.monotonic() - self.began, 3))

    def _requeue(self, cause: str, step: int | None, phrase: str) -> None:
        problem = request_requeue(self.env)
        self.log.record("requeued", cause=cause, step=step, budget=phrase,
                        **({"problem": problem} if problem else {}))

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
