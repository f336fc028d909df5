"""Every use of ``torch.distributed.checkpoint``'s private API, in one place.

DCP has no public way to load a whole checkpoint without a template state dict (its own
``dcp_to_torch_save`` calls the private loader and planner below), and its ``.metadata`` index names
a private torch function that a safe unpickler must know. ``tests/unit/test_compat.py`` checks each
of these against the installed torch and fails loudly when a new version changes one.
"""

from typing import Any

from torch.distributed.checkpoint.default_planner import _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict

# (module, name) of functions DCP's .metadata pickles besides its own record classes.
METADATA_FUNCTIONS = {("torch.serialization", "_get_layout"), ("torch", "Size")}

WholeStateLoadPlanner = _EmptyStateDictLoadPlanner  # loads every key a checkpoint holds, into an empty dict


def load_whole(state: dict[str, Any], *, storage_reader: Any, planner: Any) -> None:
    """Fill the empty ``state`` with everything the checkpoint holds, in this one process (no process group)."""
    _load_state_dict(state, storage_reader=storage_reader, planner=planner, no_dist=True)
