"""The public API a training loop uses to live on a cluster: ``cluster.start`` and the ``Job`` it gives.

A loop written with it gets what the built-in trainer has (``jobs.loop`` is written with it, and with
nothing private): its place and process group, a stop all ranks agree on at a step boundary, atomic
background checkpoints of any state, an exact resume, and the requeue hand-over::

    with cluster.start(run_dir) as job:
        state = {"model": model, "optimizer": optimizer, "data": loader}
        job.resume(state)                      # the newest checkpoint, if any: job.step says where
        while job.step < steps:
            for inputs, targets in loader:
                ...                            # one optimizer step
                job.step_done(state)           # may save; on a warning: save, requeue, exit
        job.finish(state)

The state is a dict of modules, optimizers (saved by parameter name, through
``torch.distributed.checkpoint.state_dict``, so sharded and staged models work) and anything with
``state_dict``/``load_state_dict`` (schedulers, a ``ResumableLoader``, a GradScaler). The step and
every rank's random number generators ride along.
"""

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from cluster.environment import RUN_DIR_VARIABLE, SETTINGS_VARIABLE, TaskEnvironment, detect_environment
from cluster.errors import ClusterError, SettingError
from cluster.requeue import HANG_TIMEOUT_S, JobEnd, RequeueBudget
from cluster.rundir import RunDir
from cluster.runtime.checkpoint import (
    check_compatible,
    latest_checkpoint,
    read_marker,
    read_state,
    remove_partials,
    saved_keys,
)
from cluster.runtime.checkpoint_writer import CheckpointWriter, SaveFailedError
from cluster.runtime.heartbeat import BUSY, Watchman
from cluster.runtime.process_group import process_group
from cluster.runtime.rng import capture_rng_state, restore_rng_state
from cluster.runtime.supervisor import BudgetSpentError, Supervisor
from cluster.slurm.resources import SlurmResources

# Optimizer state keyed by parameter name ("state.<fqn>.exp_avg"): pipeline stages then hold disjoint keys, and
# a checkpoint can be read by any split (torchtitan does the same for PP).
OPTIONS = StateDictOptions(flatten_optimizer_state_dict=True)
PROGRESS = "progress"  # the key of the step in a checkpoint (the library's; a state may not use it)
# Errors of the set-up (before the first step) that a retry would only repeat: configuration, files, run directory.
DETERMINISTIC = (ValueError, TypeError, FileNotFoundError, PermissionError, ClusterError)


def rng_key(rank: int) -> str:
    return f"rng-rank-{rank:05d}"


def fingerprint(config: Mapping[str, Any], world_size: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed: the caller's settings, and the number of ranks."""
    return {**config, "layout.world_size": world_size}


class Job:
    """One rank's handle on its run (``cluster.start`` makes it); every rank calls every method.

    ``step`` counts completed optimizer steps (``step_done`` advances it, ``resume`` restores it).
    """

    def __init__(self, env: TaskEnvironment, device: torch.device, run_dir: Path, supervisor: Supervisor,
                 writer: CheckpointWriter, *, checkpoint_every_steps: int, checkpoint_every_min: float,
                 config: Mapping[str, Any], allow_changes: Sequence[str]):
        self.env, self.device, self.run_dir = env, device, run_dir
        self.supervisor, self.writer = supervisor, writer
        self.checkpoint_every_steps, self.checkpoint_every_min = checkpoint_every_steps, checkpoint_every_min
        self._saved_at = time.monotonic()  # the last save, or the start: the clock checkpoint_every_min runs on
        self.config, self.allow_changes = dict(config), tuple(allow_changes)
        self.step = 0
        self.resumed_from = 0  # the step the newest checkpoint held when this run started
        self._saved_step: int | None = None
        self.finished = False  # whether finish() ran (the block's end calls it otherwise)

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def world_size(self) -> int:
        return self.env.world_size

    @property
    def local_rank(self) -> int:
        return self.env.local_rank

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes what exists once per run (metrics, a summary)."""
        return self.env.is_main

    @property
    def group(self) -> dist.ProcessGroup:
        """The gloo group checkpoints are written over (their own, so a background save never races training)."""
        return self.writer.group

    @property
    def _watchman(self) -> Watchman:
        assert self.supervisor.watchman is not None  # Supervisor.start made it, before any Job
        return self.supervisor.watchman

    def last_checkpoint(self) -> Path | None:
        """The newest complete checkpoint of the run directory (what a resume would load), or None."""
        return latest_checkpoint(self.writer.root)

    def record(self, event: str, **fields: Any) -> None:
        """Add an event to the run's ``events.jsonl`` (rank 0 writes; the other ranks' calls do nothing)."""
        if self.is_main:
            self.supervisor.log.record(event, **fields)

    def meta(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "config": fingerprint(self.config, self.world_size)}

    def resume(self, state: Mapping[str, Any]) -> int:
        """Load the newest complete checkpoint of the run directory into ``state``; the step it holds (0: none).

        A checkpoint of other settings (``config``) or another number of ranks is refused, unless the keys that
        changed are in ``allow_changes``; with another number of ranks the generators start fresh.
        """
        root = self.writer.root
        if self.is_main:
            remove_partials(root)  # what a killed writer left; no writer of this run has started yet
        dist.barrier()
        folder = latest_checkpoint(root)
        if folder is not None:
            marker = read_marker(folder)
            check_compatible(marker.get("config"), fingerprint(self.config, self.world_size), folder=folder,
                             allowed=self.allow_changes)
            same_layout = marker.get("world_size") == self.world_size
            template = self._state_dicts(state, with_rng=same_layout)
            saved = saved_keys(folder)
            rng = template.get(rng_key(self.rank), {})
            if "cuda" in rng and not any(key.startswith(f"{rng_key(self.rank)}.cuda") for key in saved):
                del rng["cuda"]  # written without CUDA (a CPU run): the GPU's generator keeps its seed
            # An optimizer saved before its first step (fp16's scaler skipped step 1) has no state in the checkpoint,
            # while the template's was made up by torch (a step with zero grads): load none, keep none.
            unstepped = [key for key, value in state.items() if isinstance(value, torch.optim.Optimizer)
                         and not any(name.startswith(f"{key}.state.") for name in saved)]
            for key in unstepped:
                template[key] = {name: v for name, v in template[key].items() if not name.startswith("state.")}
            read_state(template, folder, process_group=self.group)
            self._load(state, template)
            for key in unstepped:
                state[key].state.clear()
            self.step = self._saved_step = int(template[PROGRESS]["step"])
            if same_layout:
                restore_rng_state(template[rng_key(self.rank)])
            else:  # allowed (allow_changes): the state was resharded onto this many ranks
                self.record("resized", step=self.step, world_size=self.world_size, was=marker.get("world_size"))
        self.resumed_from = self.step
        self.supervisor.resumed(self.step)
        return self.step

    def end_step(self) -> bool:
        """Count one completed optimizer step; whether all ranks agreed to stop at this boundary (a warning
        reached one of them). When True, ``save`` and then ``hand_over``."""
        self.step += 1
        self._watchman.step(self.step)
        wanted = 0 < self.checkpoint_every_min * 60 <= time.monotonic() - self._saved_at
        return self.supervisor.should_stop(self.step, save_wanted=wanted)

    def checkpoint_due(self) -> bool:
        """Whether to save at this step: ``checkpoint_every_steps`` says so, or ``checkpoint_every_min`` have
        passed since the last save (on some rank's clock; all ranks agree on the step, at ``end_step``)."""
        every = self.checkpoint_every_steps
        return bool(every and self.step % every == 0) or self.supervisor.save_agreed

    def save(self, state: Mapping[str, Any]) -> None:
        """Save ``state`` as this step's checkpoint, in the background (the copy is taken now)."""
        with self._watchman.busy():  # the copy of a big state may take longer than a step: no hang
            self.writer.save(self._state_dicts(state, with_rng=True), self.step, self.meta())
        self._saved_step, self._saved_at = self.step, time.monotonic()

    def warned(self) -> bool:
        """Whether a warning (preemption, time limit, Ctrl-C) has reached any rank: a collective, for work between
        two step boundaries that must give way at once (an evaluation: ``save`` and ``hand_over`` then). Every
        rank calls it at the same points; ``end_step`` needs no help (its vote costs no waiting)."""
        flag = torch.tensor([1.0 if self.supervisor.flag.set else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item() > 0)

    @contextlib.contextmanager
    def between_steps(self) -> Iterator[None]:
        """Work between two steps that may last longer than one (an evaluation): no hang is declared for its length
        (a silent rank still is; a stuck collective ends at ``distributed.timeout_s``)."""
        with self._watchman.busy():
            yield

    def hand_over(self) -> NoReturn:
        """After a stop was agreed and saved: wait for the save, requeue within the budgets, leave (``JobEnd``,
        a ``SystemExit`` whose code says whether the job comes back)."""
        self._watchman.phase(BUSY)  # waiting for the last save
        self.writer.close()
        self.supervisor.stopped(self.step)
        raise AssertionError("the supervisor ends the task")  # pragma: no cover

    def step_done(self, state: Mapping[str, Any], *, save: bool = False) -> None:
        """After each optimizer step: count it, save when due (or ``save``), and on an agreed stop save and leave."""
        stop = self.end_step()
        if stop or save or self.checkpoint_due():
            self.save(state)
        if stop:
            self.hand_over()

    def finish(self, state: Mapping[str, Any] | None = None) -> None:
        """Training is over: save ``state`` unless this step is saved already, wait for the save (a failed final
        save raises ``SaveFailedError``), and record the end."""
        if state is not None and self._saved_step != self.step:
            self.save(state)
        self._watchman.phase(BUSY)  # waiting for the last save
        self.writer.check_last()
        self.supervisor.finished(self.step)
        self.finished = True

    def _state_dicts(self, state: Mapping[str, Any], *, with_rng: bool) -> dict[str, Any]:
        modules = {key: value for key, value in state.items() if isinstance(value, nn.Module)}
        out: dict[str, Any] = {}
        for key, value in state.items():
            if key == PROGRESS or key.startswith("rng-rank-"):
                raise SettingError(f"the state key {key!r} is the library's own; name that entry otherwise")
            if isinstance(value, nn.Module):
                out[key] = get_model_state_dict(value, options=OPTIONS)
            elif isinstance(value, torch.optim.Optimizer):
                out[key] = get_optimizer_state_dict(_owner(value, modules), value, options=OPTIONS)
            elif callable(getattr(value, "state_dict", None)) and callable(getattr(value, "load_state_dict", None)):
                out[key] = value.state_dict()
            else:
                raise SettingError(f"state[{key!r}] ({type(value).__name__}) has no state_dict()/load_state_dict(); "
                                   "give modules, optimizers and objects that have both")
        out[PROGRESS] = {"step": self.step}
        if with_rng:
            out[rng_key(self.rank)] = capture_rng_state()
        return out

    def _load(self, state: Mapping[str, Any], loaded: Mapping[str, Any]) -> None:
        modules = {key: value for key, value in state.items() if isinstance(value, nn.Module)}
        for key, value in state.items():
            if isinstance(value, nn.Module):
                set_model_state_dict(value, loaded[key], options=OPTIONS)
        for key, value in state.items():  # after every module: an optimizer's state maps onto their parameters
            if isinstance(value, torch.optim.Optimizer):
                set_optimizer_state_dict(_owner(value, modules), value, loaded[key], options=OPTIONS)
            elif not isinstance(value, nn.Module):
                value.load_state_dict(loaded[key])


def _owner(optimizer: torch.optim.Optimizer, modules: Mapping[str, nn.Module]) -> nn.Module:
    """The module of the state whose parameters the optimizer updates (its state is saved by their names)."""
    wanted = {id(p) for group in optimizer.param_groups for p in group["params"]}
    for module in modules.values():
        if wanted <= {id(p) for p in module.parameters()}:
            return module
    raise SettingError("an optimizer of the state updates parameters of no single module in it; put the module "
                       "that holds them in the state too")


def settings_from_environment() -> dict[str, Any]:
    """What ``python -m cluster run`` passed down to its command: run directory, warning signal, budgets."""
    settings = json.loads(os.environ.get(SETTINGS_VARIABLE) or "{}")
    if os.environ.get(RUN_DIR_VARIABLE):
        settings["run_dir"] = os.environ[RUN_DIR_VARIABLE]
    return settings


@contextlib.contextmanager
def start(run_dir: str | os.PathLike[str] | None = None, *, backend: str = "auto", timeout_s: float = 600.0,
          hang_timeout_s: float | None = None, health_check: bool | None = None,
          checkpoint_every_steps: int = 0, checkpoint_every_min: float = 30.0, keep_checkpoints: int = 3,
          async_checkpoint: bool = True,
          requeue: RequeueBudget | None = None, warning_signal: str | None = None,
          signal_lead_s: float | None = None, config: Mapping[str, Any] | None = None,
          allow_changes: Sequence[str] = (), env: TaskEnvironment | None = None,
          spell: Callable[[str], str] = str) -> Iterator[Job]:
    """Join the job's process group as this rank and supervise the block; the ``Job`` to train with.

    Every rank finds its place itself (Slurm, torchrun, submitit's local executor, ``python -m cluster run``,
    or a single process). Under ``python -m cluster run`` the run directory, warning signal and requeue
    budgets come from its options; elsewhere ``run_dir`` is required and the rest has defaults here
    (the signal and its lead: ``SlurmResources``'s; the budgets: ``RequeueBudget``'s). ``config`` is the
    fingerprint a checkpoint must match (JSON-able settings). Checkpoints are saved every
    ``checkpoint_every_min`` minutes and/or every ``checkpoint_every_steps`` steps (0: not by that), at the end,
    and when a warning stops the job: a save costs the loop a copy of the state. A rank silent for
    ``hang_timeout_s`` (frozen, dead, its node lost), or no step ending on any rank for that long, ends the job
    and names them (``cluster.runtime.heartbeat``); ``timeout_s`` is only the collectives' own. An exception in
    the block is a failure: the job is retried within the failure budget where something restarts it (Slurm,
    the local executor), once a retry could help, without the nodes a failure implicated (``cluster.bad_nodes``).
    ``health_check``: before training, check every node (``cluster.runtime.health``); a failing or far slower one
    is kept out and the job requeued at once.
    ``spell`` names settings in messages (``cluster.errors``).
    """
    given = settings_from_environment()
    run_dir = run_dir if run_dir is not None else given.get("run_dir")
    if run_dir is None:
        raise SettingError("cluster.start needs a run directory (where checkpoints and events go): pass "
                           "run_dir=..., or start the script with python -m cluster run")
    budget = requeue or RequeueBudget(**given.get("requeue", {}))
    defaults = SlurmResources()
    env = env or detect_environment()
    # Ranks sharing a node share its cores; oversubscribed threads make every rank slower. Slurm already pins
    # each task to its own CPUs.
    ranks_here = 1 if env.started_by == "slurm" else max(1, env.world_size // env.num_nodes)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks_here))
    with process_group(env, backend=backend, timeout_s=timeout_s) as joined:
        # Ranks started by hand (torchrun, srun) may each have chosen a directory (a timestamped one can differ
        # by a second between them): rank 0's wins.
        shared = [str(run_dir)]
        dist.broadcast_object_list(shared, src=0, device=joined.device)
        folder = Path(shared[0])
        folder.mkdir(parents=True, exist_ok=True)
        supervisor = Supervisor(env, folder, budget=budget,
                                warning_signal=warning_signal or given.get("signal") or defaults.signal,
                                lead_s=signal_lead_s if signal_lead_s is not None else
                                given.get("signal_lead_s", defaults.signal_lead_s),
                                hang_timeout_s=hang_timeout_s if hang_timeout_s is not None else
                                given.get("hang_timeout_s", HANG_TIMEOUT_S),
                                device=joined.device, spell=spell)
        supervisor.start()
        writer = CheckpointWriter(RunDir(folder).checkpoints, rank=env.rank, keep=keep_checkpoints,
                                  background=async_checkpoint, on_done=supervisor.saved)
        job = Job(env, joined.device, folder, supervisor, writer, checkpoint_every_steps=checkpoint_every_steps,
                  checkpoint_every_min=checkpoint_every_min, config=config or {}, allow_changes=allow_changes)
        try:
            if health_check if health_check is not None else given.get("health_check", False):
                supervisor.check_health(joined.device)
            yield job
            if not job.finished:
                job.finish()
        except (JobEnd, BudgetSpentError):  # the supervisor's own decisions
            raise
        except Exception as error:
            # A divergence (a FloatingPointError) comes back bit for bit after an exact resume; a failed save meets
            # the same disk; an error of the set-up (before the first step) is the same on every retry.
            repeats = isinstance(error, (FloatingPointError, SaveFailedError)) or (
                not supervisor.stepped and isinstance(error, DETERMINISTIC))
            supervisor.failed(error, step=supervisor.step, deterministic=repeats)
            raise
