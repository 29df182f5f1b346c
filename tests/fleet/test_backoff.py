"""The agents' reconnect backoff (issue 15 item 6): full jitter, so a fleet cut off together does not come back
together.

With "exponential + a 0-2 s jitter" every agent of a long outage waited ``max_backoff`` (120 s) plus at most
2 s: 20,000 agents retried in one 2-second wave every two minutes, a reconnect storm built into the client.
Full jitter ("Full Jitter", AWS architecture blog; tenacity's ``wait_random_exponential``) draws each wait
uniformly from the whole window, above ``initial_backoff`` and never past the cap."""
from __future__ import annotations

import statistics

from tenacity import AsyncRetrying, RetryCallState

from agent.fleet.client import Options, backoff


def _waits(options: Options, attempt: int, n: int = 2000) -> list[float]:
    strategy = backoff(options)
    state = RetryCallState(AsyncRetrying(), None, (), {})
    state.attempt_number = attempt
    return [strategy(state) for _ in range(n)]


def test_a_long_outage_spreads_the_fleets_retries_over_the_whole_window():
    o = Options()   # production: from 1 s, capped at 120 s
    late = _waits(o, attempt=12)   # 1 s × 2^11 > 120 s: at the cap
    assert all(o.initial_backoff <= w <= o.max_backoff for w in late)
    # spread over the window (uniform: about a third of it either side of the mean), not a 2-second wave
    assert statistics.pstdev(late) > o.max_backoff / 5, statistics.pstdev(late)
    in_any_2s = max(sum(1 for w in late if t <= w < t + 2) for t in range(0, int(o.max_backoff)))
    assert in_any_2s < len(late) / 10, in_any_2s


def test_the_window_still_grows_exponentially_from_the_first_retry():
    o = Options(initial_backoff=1.0, max_backoff=120.0)
    first = _waits(o, attempt=1)
    assert all(1.0 <= w <= 2.0 for w in first) and statistics.pstdev(first) > 0.2   # 1 s + [0, 1 s]
    fifth = _waits(o, attempt=5)
    assert all(1.0 <= w <= 17.0 for w in fifth) and statistics.mean(fifth) > 6.0   # 1 s + [0, 16 s]


def _attempts_against_a_closed_port(options: Options, seconds: float) -> tuple[int, int]:
    """(streams, polls) an agent tries in ``seconds`` against a port nobody listens on."""
    import asyncio
    import socket

    import grpc

    from agent.fleet import FleetAgent
    from tests.fleet import support

    with socket.socket() as s:   # a port that refuses: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

        async def go():
            agent = FleetAgent(None, support.FakeInventory(), support.FakeExecutor(), version="t", options=options,
                               channel_factory=lambda: grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
            task = asyncio.create_task(agent.run())
            await asyncio.sleep(seconds)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return agent.stats.streams, agent.stats.polls
        return asyncio.run(go())


def test_a_refused_connection_backs_off_even_when_any_stream_counts_as_lasting():
    """A stream that never got a welcome did not last, whatever ``min_stream_seconds`` says: the agent backs off
    (bench fleet runs with ``min_stream_seconds=0``; a refused or failed connect was then taken for a stream
    that had lasted and retried within ``jitter``, no backoff: 19,950 agents stormed the restarting server)."""
    o = Options(initial_backoff=0.3, max_backoff=5.0, jitter=0.02, min_stream_seconds=0, call_timeout=2)
    streams, polls = _attempts_against_a_closed_port(o, 2.5)
    # backoff 0.3 + [0, 0.3 × 2^k]: at most 6 attempts in 2.5 s (old code: one every ~10 ms, over a hundred)
    assert 1 <= streams <= 6 and polls == streams, (streams, polls)


def test_without_the_poll_fallback_a_failed_stream_backs_off_and_never_polls():
    o = Options(initial_backoff=0.3, max_backoff=5.0, jitter=0.02, min_stream_seconds=0, poll_fallback=False)
    streams, polls = _attempts_against_a_closed_port(o, 2.5)
    assert 1 <= streams <= 6 and polls == 0, (streams, polls)


def test_after_a_named_window_a_failed_reconnect_waits_within_that_window_again():
    """A daemon that stops names a window (``cns-reconnect-spread-ms``: its streams over the hellos a second it
    admits). An agent whose reconnect then fails (the daemon is not back yet) waits a random point of that
    window again, not the backoff's first short windows: at 5,000 agents every first attempt met a daemon
    still down, and the whole fleet came back within the backoff's first seconds (hello-to-welcome p50 20 s)."""
    import asyncio

    import grpc

    from agent.fleet import FleetAgent
    from benchmarks import _fleet_bare
    from proto.cns.v1 import fleet_pb2_grpc
    from tests.fleet import support

    async def go():
        server = grpc.aio.server()
        bare = _fleet_bare.Bare()
        fleet_pb2_grpc.add_FleetServicer_to_server(bare, server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        o = Options(initial_backoff=0.05, max_backoff=0.2, jitter=0.01, min_stream_seconds=0, poll_fallback=False)
        agent = FleetAgent(None, support.FakeInventory(), support.FakeExecutor(), version="t", options=o,
                           channel_factory=lambda: grpc.aio.insecure_channel(f"127.0.0.1:{port}"))
        task = asyncio.create_task(agent.run())
        try:
            await support.until(lambda: agent.stats.welcomes == 1, what="the welcome")
            bare.spread_s = 1.5   # the stopping server names a 1.5 s window, and stays down
            for q in list(bare.queues):
                q.put_nowait(None)
            await server.stop(1)
            streams = agent.stats.streams
            await asyncio.sleep(4.0)
            tried = agent.stats.streams - streams
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert agent.stats.reconnect_spread == 1.5
        # each wait ≥ 0.05 s + U(0, 1.5 s): about 5 tries in 4 s (the backoff alone, capped at 0.2 s: over 20)
        assert 1 <= tried <= 9, tried
    asyncio.run(go())


def _arrivals(n: int, window: float, down: float, seed: int = 7) -> list[float]:
    """When ``n`` agents told to reconnect within ``window`` reach a daemon that is down for ``down`` s after
    their streams ended (it stops, then restarts): each agent's ``_wait`` after every refused attempt, as the
    agent's own retry loop applies it (one tenacity attempt count per agent)."""
    import random

    from agent.fleet import FleetAgent
    from tests.fleet import support

    random.seed(seed)
    o = Options(initial_backoff=1.0, max_backoff=20.0, jitter=2.0, min_stream_seconds=0, poll_fallback=False)
    out = []
    for _ in range(n):
        agent = FleetAgent(None, support.FakeInventory(), support.FakeExecutor(), version="t", options=o)
        agent._retry_spread = window
        t = random.uniform(0, max(o.jitter, window))   # FleetAgent.run: the first try, a random point of it
        state = RetryCallState(AsyncRetrying(), None, (), {})
        while t < down:   # refused: the daemon is not back yet
            state.attempt_number += 1
            t += agent._wait(state)
        out.append(t)
    return out


def test_a_fleet_that_met_its_daemon_down_comes_back_no_faster_than_the_window_it_was_named():
    """The window a stopping daemon names is its fleet over the hellos a second it admits; the agents whose
    point of it fell while the daemon was down (it took 46 s to stop at 12,000 agents) must not come back on
    top of the others. With "a random point of the window again" they did: 60 % of the fleet retried within
    the window's first part, the restarted daemon met about 1.6 × the rate it admits, its hello-to-welcome
    reached 28.8 s and grpc core cancelled the calls left unrequested for 30 s (26,460 CANCELLED at 12,000).
    Keeping each agent's point of the window, one window later, keeps the arrival rate at the one named."""
    n, window, down = 3000, 60.0, 36.0
    xs = _arrivals(n, window, down)
    after = sorted(x - down for x in xs)
    assert all(x >= 0 for x in after)
    width = window / 10
    bins = [0] * 30
    for x in after:
        bins[min(len(bins) - 1, int(x // width))] += 1
    fair = n / 10   # the named rate: n over the window, per tenth of it
    assert max(bins) <= 1.25 * fair, (max(bins), fair, bins)
    # and all back within about one window (+ the jitter) of the restart, not several
    assert after[-1] <= window + 2 * Options().jitter + 1.0, after[-1]
