"""How many streams the gateway carries at once, in total and for each client, so no client starves others."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import grpc

from services.common.errors import RequestError

#: What RetryInfo suggests: streams are long, so a slot frees up on the scale of seconds.
RETRY_AFTER_S = 2.0


class StreamLimiter:
    """Counts open streams; `acquire(client)` refuses with RESOURCE_EXHAUSTED (and RetryInfo) when full."""

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total = max_total
        self.max_per_client = max_per_client
        self._open: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self._open.values())

    def open_for(self, client: str) -> int:
        return self._open[client]

    def acquire(self, client: str) -> None:
        """Count a new stream of `client`, or raise RequestError when a limit is reached."""
        if self._open[client] >= self.max_per_client:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TOO_MANY_STREAMS_FOR_CLIENT",
                f"this client already has {self._open[client]} open streams, the most one client may hold "
                "(MAX_STREAMS_PER_CLIENT): close one, or retry after the delay in RetryInfo",
                retry_after_s=RETRY_AFTER_S,
            )
        if self.total >= self.max_total:
            raise RequestError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "TOO_MANY_STREAMS",
                f"the gateway carries its maximum of {self.max_total} streams (MAX_CONCURRENT_STREAMS): "
                "retry after the delay in RetryInfo",
                retry_after_s=RETRY_AFTER_S,
            )
        self._open[client] += 1

    def release(self, client: str) -> None:
        if self._open[client] > 0:
            self._open[client] -= 1
        if not self._open[client]:
            del self._open[client]

    @contextmanager
    def held(self, client: str) -> Iterator[None]:
        """Releases the stream `acquire` counted when the block ends, however it ends."""
        try:
            yield
        finally:
            self.release(client)
