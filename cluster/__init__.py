"""clusterjobs: PyTorch distributed training from a laptop to a Slurm cluster, and kept alive there.

The library. Everything here but ``cluster.runtime`` is torch-free (a login node runs it); ``cluster.runtime``
is what each rank runs. It never imports Hydra or the built-in trainer (``jobs``). README: Architecture.
"""
