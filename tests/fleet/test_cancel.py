"""Stopping the agent (Ctrl-C, logout, the supervisor) ends its fleet client, whatever the stream was doing.

Found in CI: ``test_a_refused_stream_backs_off_without_polling`` cancelled the agent and waited 60 s for it.
Python 3.11's ``asyncio.wait_for`` returns (or raises) the inner result when a cancel arrives just after the
inner await finished, and the cancel is lost: here the personalizer's refusal of a hello met the agent's stop,
the agent took the refusal, backed off and reconnected, and ran on. The channel below is a test double of
the injectable ``channel_factory`` seam (the real stream is in test_stream.py): only it lets the test put
the cancel at each event-loop step after the reply, deterministically.
"""
import asyncio

import grpc

from agent.fleet.client import FleetAgent
from tests.fleet import support
from tests.fleet.test_stream import FAST


class _Call:
    def __init__(self):
        self.reply = asyncio.get_running_loop().create_future()

    async def write(self, msg):
        pass

    async def read(self):
        return await self.reply

    async def trailing_metadata(self):
        return grpc.aio.Metadata()

    def cancel(self):
        return True


class _Channel:
    def __init__(self, calls: list):
        self.calls = calls

    def stream_stream(self, *args, **kwargs):
        def connect():
            self.calls.append(_Call())
            return self.calls[-1]
        return connect

    def unary_unary(self, *args, **kwargs):
        return None

    async def close(self):
        pass


def test_a_stop_that_meets_a_refused_hello_stops_the_agent():
    async def go():
        stuck = []
        for steps in range(6):   # the cancel at each loop step after the refusal reached the agent
            calls: list[_Call] = []
            agent = FleetAgent(None, support.FakeInventory(), support.FakeExecutor(), version="1", options=FAST,
                               channel_factory=lambda: _Channel(calls))
            task = asyncio.create_task(agent.run())
            while not calls:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.01)   # the agent waits for the welcome
            calls[0].reply.set_exception(grpc.aio.AioRpcError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(),
                "more than 1 hellos a minute"))
            for _ in range(steps):
                await asyncio.sleep(0)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=2)
            if task not in done:
                stuck.append(steps)
                task.cancel()
                await asyncio.wait({task}, timeout=2)
            else:
                assert task.cancelled(), task
        assert not stuck, f"the agent ran on after its stop, cancelled {stuck} loop steps after the refusal"
    asyncio.run(asyncio.wait_for(go(), 60))
