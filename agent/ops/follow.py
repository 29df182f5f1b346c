"""Following a request the personalizer queued (CA outside its service window, CA down, retrying).

``follow(uplink, request_id, ...)`` waits for a terminal state of a request that
the personalizer has accepted: first through the ``WatchRequest`` server stream;
if the stream breaks (personalizer restarted, network cut, proxy idle timeout)
it asks once with ``GetRequest`` and then watches again, pacing its retries.
After ``timeout_s`` it raises ``UplinkUnavailable``: the journaled operation
stays open and the next agent start or card insert follows the *same* request
id again — a queued request is never submitted twice.

``find_or_none(uplink, request_id)``: the stored request, or None when the
personalizer has never seen that id (used on resume before re-submitting).

Imports ``agent.ops.errors`` only; ``uplink`` is a ``PersonalizerClient`` (or anything
with ``watch_request`` and ``get_request``).
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from agent.ops.errors import UplinkError, UplinkUnavailable
from cns_spec import requests

log = logging.getLogger("cns.agent.follow")

STATE_ISSUED, STATE_FAILED = requests.CODE_ISSUED, requests.CODE_FAILED   # cns.v1.RequestState values
TERMINAL = requests.TERMINAL_CODES
POLL_INTERVAL_S = 2.0


def is_terminal(resp) -> bool:
    return resp is not None and resp.state in TERMINAL


async def find_or_none(uplink, request_id: str):
    try:
        return await uplink.get_request(request_id)
    except UplinkUnavailable:
        raise
    except UplinkError as exc:
        if exc.code == "NOT_FOUND":
            return None
        raise


async def follow(uplink, request_id: str, *, timeout_s: float, progress: Callable[[str], None] | None = None,
                 poll_interval_s: float = POLL_INTERVAL_S):
    """The request once terminal; ``UplinkUnavailable`` if it is still queued after ``timeout_s``."""
    say = progress or (lambda msg: None)
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            state = f"state {last.state}" if last is not None else "no answer"
            raise UplinkUnavailable(f"request {request_id} still queued after {timeout_s:.0f} s ({state}); "
                                    "the operation is kept and follows the same request when resumed")
        try:
            async with asyncio.timeout(left):
                async for update in uplink.watch_request(request_id):
                    last = update
                    if is_terminal(update):
                        return update
            # the stream ended without a terminal state: fall through to a poll
        except TimeoutError:
            continue   # the deadline check above raises
        except UplinkUnavailable as exc:
            log.info("watching %s broke (%s); polling", request_id, exc)
            say(f"watching request {request_id} interrupted; polling the personalizer")
        try:
            last = await uplink.get_request(request_id)
            if is_terminal(last):
                return last
        except UplinkUnavailable as exc:
            log.info("polling %s failed (%s); retrying", request_id, exc)
        await asyncio.sleep(min(poll_interval_s, max(0.0, deadline - time.monotonic())))
