"""Recovery on insert: finish or undo an interrupted operation as soon as its card is seen again.

``recover_on_insert(registry, catalog, ops, connect, retry_s)`` is one of the
agent's supervised tasks (``agent.app``). It follows the registry's events (and
its snapshot at start); for a known card with an open operation it asks
``ops.recover`` to settle it. An operation left open (request still queued at
the personalizer, personalizer unreachable) is tried again every ``retry_s``
(the station config's ``[operations] recovery_retry_seconds``) while its card
stays in the reader. Each device recovers in its own task: a recovery waiting
on one reader never delays another. Imports ``agent.devices`` only.
"""
from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from agent.devices.catalog import Catalog
from agent.devices.inspect import reread_card
from agent.devices.registry import DeviceRegistry

log = logging.getLogger("agent.recovery")


async def recover_on_insert(registry: DeviceRegistry, catalog: Catalog, ops: Any,
                            connect: Callable[[str], Any], retry_s: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    _seq, readers, unsubscribe = registry.subscribe_with_snapshot(
        lambda ev: loop.call_soon_threadsafe(queue.put_nowait, ev.reader))
    for r in readers:
        queue.put_nowait(r)

    def again_later(name: str) -> None:
        def push() -> None:
            view = registry.reader(name)
            if view is not None:
                queue.put_nowait(view)
        loop.call_later(retry_s, push)

    ops.on_open = again_later   # an operation the API left open (CA closed, stopped) is retried too
    running: dict[str, asyncio.Task] = {}

    async def recover_one(reader) -> None:
        card = reader.card
        model = catalog.models[card.model_id]
        try:
            out = await ops.recover(connect=connect, reader=reader.name, card_serial=card.serial, model=model)
            if out is not None:
                log.info("card %s: interrupted %s finished as %s", card.serial, out.op_id, out.state)
                if out.state != "open":   # the card changed (finished or undone): show it as it is now
                    try:
                        await asyncio.to_thread(reread_card, registry, reader.name, connect, model)
                    except Exception as exc:
                        log.info("could not re-read the card in %s after recovery: %s", reader.name, exc)
        except Exception as exc:  # a card pulled again, the personalizer down: retried
            log.warning("card %s: recovery not finished (%s); retried in %.0f s and when the card is seen "
                        "again", card.serial, exc, retry_s)
            again_later(reader.name)

    try:
        while True:
            reader = await queue.get()
            card = reader.card
            if card is None or not card.serial or card.model_id not in catalog.models:
                continue
            task = running.get(reader.name)
            if task is not None and not task.done():
                continue   # one recovery per device at a time; others go on (locks are per device)
            running[reader.name] = asyncio.create_task(recover_one(reader), name=f"recover:{reader.name}")
    finally:
        unsubscribe()
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
