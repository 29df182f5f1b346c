"""A stream's session in the hub is small (issue 15 item 6: 20,000 streams under 2 GiB): its mailbox keeps the
writer's items in order and wakes the writer, without an ``asyncio.Queue`` (three deques, ~2 KiB) per stream."""
from __future__ import annotations

import asyncio
import tracemalloc

from personalizer.fleet.hub import WAKE, Hub, Mailbox


def test_the_mailbox_hands_items_over_in_order_and_wakes_a_waiting_writer():
    async def go():
        box = Mailbox()
        box.put_nowait(1)
        box.put_nowait(2)
        assert [await box.get(), await box.get()] == [1, 2] and box.qsize() == 0
        waiting = asyncio.create_task(box.get())
        await asyncio.sleep(0.01)
        assert not waiting.done()
        box.put_nowait(EOFError())
        assert isinstance(await asyncio.wait_for(waiting, 1), EOFError)
        waiting = asyncio.create_task(box.get())   # a writer cancelled while waiting leaves the box usable
        await asyncio.sleep(0.01)
        waiting.cancel()
        box.put_nowait("x")
        assert await box.get() == "x"
    asyncio.run(go())


def test_a_session_costs_the_hub_under_one_kib():
    async def go():
        hub = Hub()
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            for k in range(2000):
                hub.attach(f"urn:cns:station:RM:S-{k}")
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        per = sum(s.size_diff for s in after.compare_to(before, "filename")) / 2000
        assert per < 1024, per   # with an asyncio.Queue each: ~2,500 bytes
        s = hub._sessions["urn:cns:station:RM:S-7"]
        assert await s.queue.get() == WAKE   # attach asks the writer to deliver what is pending
    asyncio.run(go())
