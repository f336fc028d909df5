"""sbatch scripts rendered by a pure function, compared with golden files (submitit's test_slurm.py style).

Refresh the golden files after an intended change with: UPDATE_GOLDEN=1 python -m pytest tests/unit/test_slurm_render.py
"""

import os
import subprocess
from pathlib import Path

import pytest

from cluster.slurm.resources import SlurmResources
from cluster.slurm.sbatch import render_sbatch

GOLDEN = Path(__file__).parent / "golden"
FOLDER = Path("/runs/exp 1/logs")
PYTHON = "/opt/venv/bin/python"

CASES = {
    "cpu_2x2": (SlurmResources(nodes=2, tasks_per_node=2), None),
    "gpu_4x8": (SlurmResources(nodes=4, tasks_per_node=8, gpus_per_node=8, cpus_per_task=6, mem_gb=480,
                               timeout_min=1440, partition="gpu", account="proj-42", qos="high",
                               constraint="h100&ib", exclude="node[13-14]"), None),
    "array_12_by_4": (SlurmResources(partition="debug", timeout_min=30), (12, 4)),
    "setup_and_extra": (SlurmResources(setup=("module load cuda/12.4", "source /opt/venv/bin/activate"),
                                       additional=(("mail-type", "END"), ("mail-user", "me@example.org")),
                                       signal="USR1", signal_lead_s=300), None),
    "hostile_name": (SlurmResources(job_name="x; rm -rf ~ $(reboot) `id`", partition="a'b"), None),
    # --nodes=1-4, the tasks per node given to srun (on the allocation, Slurm would give the job 1 node only)
    "elastic_1_to_4": (SlurmResources(nodes=4, min_nodes=1, tasks_per_node=2, cpus_per_task=3), None),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sbatch_matches_golden_file(case):
    resources, array = CASES[case]
    text = render_sbatch(resources, folder=FOLDER, python=PYTHON,
                         **({"array_size": array[0], "array_parallelism": array[1]} if array else {}))
    golden = GOLDEN / f"{case}.sbatch"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(text)
        pytest.skip(f"{golden.name} rewritten, not compared: review it with git diff, then run without UPDATE_GOLDEN")
    assert text == golden.read_text()


def test_shell_metacharacters_stay_inside_their_directive(tmp_path):
    """bash runs the script: every #SBATCH line stays a comment and no value becomes a command."""
    resources, _ = CASES["hostile_name"]
    script = render_sbatch(resources, folder=tmp_path, python="true")
    lines = script.splitlines()
    assert "#SBATCH --job-name='x; rm -rf ~ $(reboot) `id`'" in lines
    assert "#SBATCH --partition='a'\"'\"'b'" in lines
    trace = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
    assert trace.returncode == 0, trace.stderr


@pytest.mark.parametrize("bad", [
    dict(job_name="ok\nrm -rf ~"), dict(setup=("echo hi\r",)), dict(additional=(("mail type", "END"),)),
    dict(additional=(("comment", "a\nb"),)), dict(nodes=0), dict(signal="KILL"), dict(timeout_min=-1),
])
def test_values_that_could_break_out_are_refused(bad):
    with pytest.raises(ValueError):
        SlurmResources(**bad)
