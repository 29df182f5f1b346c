"""The agent's side of fleet management (issue 15): the stream it opens to the personalizer.

``client``  ``FleetAgent`` and ``run(...)``: hello, heartbeats, inventory deltas, commands with
            ack/progress/result; reconnect with backoff and jitter; polling when streams break.
"""
from agent.fleet.client import DeviceInfo, FleetAgent, Options, Outcome, run

__all__ = ["DeviceInfo", "FleetAgent", "Options", "Outcome", "run"]
