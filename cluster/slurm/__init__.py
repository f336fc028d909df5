"""Slurm's side, torch-free: what a job asks for (``resources``), its batch script and submission
(``sbatch``), the checks against the live cluster (``limits``), every Slurm command we run (``commands``),
host lists, and what each Slurm task runs (``task_runner``)."""
