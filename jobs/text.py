"""``data=text``'s dataset: a file's bytes as tokens, read through a memory map (``jobs.data.text`` names it)."""

from pathlib import Path
from typing import Any

import numpy
import torch
from torch.utils.data import Dataset


class ByteWindows(Dataset):
    """Window ``i`` holds bytes ``[i * seq_len, (i + 1) * seq_len]``: the inputs are its first ``seq_len`` bytes,
    the targets the last ``seq_len`` (each input's next byte). Windows do not overlap, so an epoch reads the file
    once; the last bytes that fill no window are left out. A position in the data is a window index, so a resumed
    run goes on at the very window (``cluster.ResumableLoader``)."""

    num_classes = 256  # the vocabulary: every byte value

    def __init__(self, path: str, seq_len: int):
        self.path, self.seq_len = Path(path), seq_len
        self.windows = (self.path.stat().st_size - 1) // seq_len
        self._bytes: Any = None  # opened on first read, in each process (a DataLoader worker maps it anew)

    def __len__(self) -> int:
        return self.windows

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= index < self.windows:
            raise IndexError(f"window {index} of {self.windows}")
        if self._bytes is None:
            self._bytes = numpy.memmap(self.path, dtype=numpy.uint8, mode="r")
        start = index * self.seq_len
        window = torch.from_numpy(self._bytes[start:start + self.seq_len + 1].astype(numpy.int64))
        return window[:-1], window[1:]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_bytes": None}  # a map is not sent to another process: it maps the file itself
