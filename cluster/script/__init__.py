"""Any command as every rank of a job: ``python -m cluster run [options] -- COMMAND [ARGS...]``.

``launch`` is the login node's side (options, checks, submission, the ``--local`` controller); ``task`` is
what each rank runs around the command (torchrun's variables, and what its end means).
"""
