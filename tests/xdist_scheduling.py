"""How pytest-xdist's workers share the suite: every Slurm test in one of them, one after another.

The Slurm tests share the local cluster's 8 slots and its nodes (one test preempts, freezes or kills what the
next would use), so two of them must never run at once. xdist's own ``--dist loadgroup`` cannot be trusted
with that: it groups by a suffix it writes into each test's ``_nodeid``, which pytest 9 no longer reads
(the Slurm tests ran side by side and cancelled each other's jobs). Instead this scheduler puts them in one
scope, through the method xdist's own file and group schedulers override for their scopes (``_split_scope``):
the one use of xdist's internals, checked by ``tests/unit/test_compat.py``.
"""

from xdist.scheduler import LoadScopeScheduling

SLURM_TESTS = "tests/slurm/"


class SlurmTestsTogether(LoadScopeScheduling):
    """One scope for all of ``tests/slurm``; every other test a scope of its own (any worker takes it). xdist
    hands out the biggest scopes first: the Slurm tests start at once."""

    def _split_scope(self, nodeid: str) -> str:
        return SLURM_TESTS if nodeid.startswith(SLURM_TESTS) else nodeid
