"""Where the embedded CA's private-key work runs: a small pool of signing threads.

cryptography (>= the release of pyca/cryptography#14370) releases the GIL
inside RSA signing, so a signature on a pool thread runs on another core
while the event loop goes on with gRPC, the broker and the store: measured
here, a pure-Python thread keeps its full speed while another thread signs
certificates (see the commit that added this module). ``SigningPool(n)``
with n >= 1 runs the CA's signing calls on n threads; n == 0 runs them
inline on the event loop (the old behaviour, kept for comparison). The pool
only moves where ``fn`` runs: ordering, idempotency and the records stay
with the caller. Imports nothing of ours.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os


def default_workers() -> int:
    """One signing thread per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class SigningPool:
    def __init__(self, workers: int):
        if workers < 0:
            raise ValueError(f"signing workers must be >= 0, got {workers}")
        self.workers = workers
        self._pool = (concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ca-sign")
                      if workers else None)

    async def run(self, fn, *args):
        if self._pool is None:
            return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
