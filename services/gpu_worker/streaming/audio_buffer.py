"""The audio a streaming session holds, in one array reused for the whole stream.

A stream appends every 100 ms and drops from the front for hours. New arrays each time (concatenate,
slice and copy) leave the allocator a heap of freed blocks of every size, and a process's resident
memory creeps up over an hour; here appending copies into spare room, and dropping moves a start index.
"""

from __future__ import annotations

import numpy as np


class AudioBuffer:
    """float32 samples from stream position `start` on; `view` is valid until the next append."""

    def __init__(self, capacity: int) -> None:
        self._data = np.zeros(capacity, dtype=np.float32)
        self._head = 0  # index of the first held sample in _data
        self.size = 0
        self.start = 0  # stream position of the first held sample

    def append(self, samples: np.ndarray) -> None:
        n = samples.size
        if self._head + self.size + n > self._data.size:
            if self.size + n <= self._data.size:
                # Move the held samples to the front in blocks no longer than the shift, so a block's
                # source and destination never overlap and numpy needs no temporary copy.
                shift = self._head
                for i in range(0, self.size, shift):
                    j = min(i + shift, self.size)
                    self._data[i:j] = self._data[shift + i : shift + j]
            else:
                grown = np.zeros(max(2 * self._data.size, self.size + n), dtype=np.float32)
                grown[: self.size] = self._data[self._head : self._head + self.size]
                self._data = grown
            self._head = 0
        self._data[self._head + self.size : self._head + self.size + n] = samples
        self.size += n

    def drop_before(self, position: int) -> int:
        """Forget the samples before stream `position`; returns how many went."""
        n = max(0, min(position - self.start, self.size))
        self._head += n
        self.size -= n
        self.start += n
        return n

    def view(self, begin: int = 0, end: int | None = None) -> np.ndarray:
        """Samples at stream positions [begin, end) (clipped to what is held), without copying."""
        lo = max(begin - self.start, 0)
        hi = self.size if end is None else max(lo, min(end - self.start, self.size))
        return self._data[self._head + lo : self._head + hi]
