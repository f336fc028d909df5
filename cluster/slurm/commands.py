"""Every Slurm command the library runs (``sbatch``, ``scontrol``, ``sacct``, ``squeue``, ``scancel``), and the
parsing of what they print. A single run's ``sbatch`` is run by submitit (``cluster.slurm.sbatch``).

Two kinds of callers: a login node checking a job before it is submitted wants a clear error when
Slurm does not answer (``scontrol``); a rank asking about its own job must never fail because of it
(``scontrol_quietly``: the events log records what happened either way).
"""

import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence

from cluster.errors import SlurmUnavailableError, SubmissionRefusedError, literal
from cluster.slurm.hostlist import expand_hostlist

TIMEOUT_S = 15  # a healthy controller answers in well under a second
# sbatch retries by itself while the controller is busy ("Resource temporarily unavailable"): give it time.
SBATCH_TIMEOUT_S = 120
RANK_TIMEOUT_S = 20  # a rank asking about its own job waits a little longer: it has nothing else to do
_ARRAY_RANGE = re.compile(r"^(\d+)_\[([^\]]+)\]$")  # sacct's pending tasks of an array: 123_[4-11%4]
# Slurm's job states: still queued or running, and ended otherwise than COMPLETED.
ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED", "REQUEUE_HOLD",
          "REQUEUE_FED", "STAGE_OUT", "SIGNALING"}
ENDED_BADLY = {"FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED"}
_HINT = "check `scontrol ping`, or start the local cluster: slurm/local-cluster up"


def scontrol(*args: str) -> str:
    """``scontrol ARGS``'s output, or SlurmUnavailableError with what to do."""
    if shutil.which("scontrol") is None:
        raise SlurmUnavailableError("Slurm is not installed here (no scontrol on PATH); submit from a login node "
                                    "of your cluster, or start the local one: slurm/local-cluster up")
    try:
        done = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SlurmUnavailableError(f"the Slurm controller did not answer in {TIMEOUT_S} s; {_HINT}") from None
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no message"]
        raise SlurmUnavailableError(f"the Slurm controller is unreachable ({literal(reason[0])}); {_HINT}")
    return done.stdout


def sbatch(script: str) -> str:
    """Submit a batch script given as text (sbatch reads it from its standard input: no file is written); the job
    id. SubmissionRefusedError with sbatch's reason when it refuses, SlurmUnavailableError when it cannot ask."""
    if shutil.which("sbatch") is None:
        raise SlurmUnavailableError("Slurm is not installed here (no sbatch on PATH); submit from a login node "
                                    "of your cluster, or start the local one: slurm/local-cluster up")
    try:
        done = subprocess.run(["sbatch", "--parsable"], input=script, capture_output=True, text=True,
                              timeout=SBATCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SlurmUnavailableError(f"sbatch got no answer from the controller in {SBATCH_TIMEOUT_S} s; see whether "
                                    f"the job went out (squeue --me) before submitting again; {_HINT}") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else "no reason given")
        raise SubmissionRefusedError(f"sbatch refused the job, nothing was submitted: {literal(reason)}")
    return done.stdout.strip().split(";")[0]  # --parsable: "JOBID" or "JOBID;CLUSTER"


def scontrol_quietly(*args: str) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)`` of ``scontrol ARGS``; exit code -1 when it could not be run."""
    try:
        done = subprocess.run(["scontrol", *args], capture_output=True, text=True, timeout=RANK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as error:
        return -1, "", str(error)
    return done.returncode, done.stdout, done.stderr


def max_array_size() -> int:
    """The cluster's MaxArraySize: array task ids must stay below it (``scontrol show config``)."""
    for line in scontrol("show", "config").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "MaxArraySize":
            return int(value.strip())
    return 1001  # Slurm's default, for a controller that does not say


def slurm_id(job_id: str, task_id: int) -> str:
    """The id squeue, sacct and scancel know a job by: ``ARRAY_TASK`` for an array task (``task_id`` >= 0)."""
    return f"{job_id}_{task_id}" if task_id >= 0 else job_id


def own_job_id(environ: Mapping[str, str] | None = None) -> str:
    """This task's job as ``scontrol`` takes it: ``<array job>_<task>`` for an array task."""
    environ = os.environ if environ is None else environ
    if environ.get("SLURM_ARRAY_JOB_ID") and environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID", "")


def job_fields(job_id: str) -> dict[str, str]:
    """``scontrol show job``'s Key=Value fields for one job (empty when Slurm does not answer)."""
    code, out, _ = scontrol_quietly("show", "job", "--oneliner", job_id)
    return _key_values(out) if code == 0 else {}


def _key_values(out: str) -> dict[str, str]:
    """``scontrol show ... --oneliner``'s Key=Value fields."""
    return dict(token.split("=", 1) for token in out.split() if "=" in token)


def requeue(job_id: str, *, exclude: Sequence[str] = ()) -> str:
    """``scontrol requeue JOB``, then keep the ``exclude`` nodes out of its next run; "" on success, else why it did
    not work.

    Slurm takes a job's ExcNodeList only while the job is pending, and a requeued job is: it may start again only
    after the credentials' lifetime (``AuthInfo=cred_expire``, 120 s by default), far more than the update takes.
    """
    code, _, err = scontrol_quietly("requeue", job_id)
    if code == -1:
        return f"scontrol requeue failed: {err}"
    if code != 0:
        return f"scontrol requeue: {err.strip() or code}"
    if exclude:
        code, _, err = scontrol_quietly("update", f"JobId={job_id}", f"ExcNodeList={','.join(exclude)}")
        if code != 0:
            return f"requeued, but the nodes {','.join(exclude)} could not be excluded: {err.strip() or code}"
    return ""


def partition_nodes(partition: str) -> list[str]:
    """The nodes of a partition (empty when Slurm does not answer)."""
    code, out, _ = scontrol_quietly("show", "partition", "--oneliner", partition)
    fields = _key_values(out) if code == 0 else {}
    return expand_hostlist(fields.get("Nodes", "")) if fields.get("Nodes", "(null)") != "(null)" else []


def unhealthy_nodes(nodes: Sequence[str]) -> dict[str, str]:
    """Which of these nodes Slurm has lost or taken out (DOWN, FAIL, not responding: ``*``), with their state."""
    if not nodes:
        return {}
    out = _output(["sinfo", "-h", "-N", "-n", ",".join(nodes), "-o", "%N|%t"]) or ""
    states = dict(line.split("|", 1) for line in out.split() if "|" in line)
    return {node: state for node, state in states.items()
            if state.endswith("*") or state.rstrip("*$~#!%@^-") in ("down", "fail", "failg")}


def set_comment(job_id: str, text: str) -> None:
    """The job's comment (``squeue -o %k``, ``sacct -o Comment``); silently nothing when Slurm does not answer."""
    scontrol_quietly("update", f"JobId={job_id}", f"Comment={text}")


def cancel(job_ids: list[str]) -> None:
    """``scancel`` these jobs (array tasks as ``ARRAY_TASK``)."""
    subprocess.run(["scancel", *job_ids], check=True, timeout=TIMEOUT_S)


def cancel_quietly(job_id: str) -> None:
    """``scancel JOB`` from inside the job (nothing to do if it fails: the job ends at its timeouts anyway)."""
    try:
        subprocess.run(["scancel", job_id], capture_output=True, timeout=RANK_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        pass


def expand_array_ids(job_id: str) -> list[str]:
    """``123_[0-2,5%4]`` -> ``123_0 123_1 123_2 123_5``; any other id unchanged."""
    match = _ARRAY_RANGE.match(job_id)
    if not match:
        return [job_id]
    array, spec = match.group(1), match.group(2).split("%")[0]
    tasks: list[int] = []
    for part in spec.split(","):
        first, _, last = part.partition("-")
        tasks.extend(range(int(first), int(last or first) + 1))
    return [f"{array}_{task}" for task in tasks]


def parse_states(output: str) -> dict[str, tuple[str, str]]:
    """``JOBID|STATE|ELAPSED`` lines (sacct -P, squeue -o) -> {job id: (state, elapsed)}."""
    states = {}
    for line in output.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3 or not parts[0]:
            continue
        state = parts[1].split()[0] if parts[1].strip() else "UNKNOWN"  # "CANCELLED by 0"
        for job_id in expand_array_ids(parts[0]):
            states[job_id] = (state, parts[2])
    return states


def job_state(job_id: str) -> str:
    """One job's state ("" when Slurm does not know it, or does not answer)."""
    return job_states([job_id])[0].get(job_id, ("", ""))[0]


def job_states(job_ids: list[str]) -> tuple[dict[str, tuple[str, str]], str]:
    """States of these jobs and where they came from: ``sacct``, or ``squeue`` when accounting is down.

    ``squeue`` also fills in what ``sacct`` does not list yet (the database lags a fresh submission).
    """
    accounting = _output(["sacct", "-n", "-P", "-X", "-j", ",".join(sorted(set(job_ids))),
                          "--format=JobID,State,Elapsed"])
    queued = parse_states(_output(["squeue", "-h", "-r", "--me", "-o", "%i|%T|%M"]) or "")
    if accounting is None:
        return queued, "squeue and the run directories (accounting unavailable)"
    return {**queued, **parse_states(accounting)}, "sacct"


def _output(command: list[str]) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
