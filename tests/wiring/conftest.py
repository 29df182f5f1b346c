"""Fixtures for the agent's wiring tests: an agent built by ``Agent.build`` running in its own event loop
(a thread), with the USB backend on the emulated pyusb bus, so client commands run in the test's thread."""
from __future__ import annotations

import asyncio
import threading
import time

import pytest

from agent.app import Agent, AgentConfig
from agent.devices.usb import UsbBackend
from firmware_profiles.usbemu import EmulatedUsbBus, make_token
from firmware_profiles.usbtoken import load_token_models


@pytest.fixture(scope="session")
def token_models():
    return load_token_models()


@pytest.fixture
def bus():
    return EmulatedUsbBus()


@pytest.fixture
def token(token_models, tmp_path, bus):
    t = make_token(token_models["cns-token-ccid"], tmp_path / "flash.bin")
    bus.plug(t)
    yield t
    t.flash.close()


class RunningAgent:
    """``Agent.build(cfg, backends=...)`` then ``run(stop)`` in a thread with its own loop."""

    def __init__(self, cfg: AgentConfig, backends, uplink=None):
        self.cfg, self.backends, self.uplink = cfg, backends, uplink
        self.agent: Agent | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def body():
            self.loop, self.stop_event = asyncio.get_running_loop(), asyncio.Event()
            self.agent = await Agent.build(self.cfg, backends=self.backends, uplink=self.uplink)
            self._ready.set()
            await self.agent.run(self.stop_event)
        try:
            asyncio.run(body())
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.error = exc
        finally:
            self._ready.set()

    @staticmethod
    def build_only(cfg: AgentConfig, backends, uplink=None) -> list[str]:
        """The task names ``Agent.build`` registers (the agent is closed again, never run)."""
        async def body():
            agent = await Agent.build(cfg, backends=backends, uplink=uplink)
            await agent.close()
            return agent.task_names
        return asyncio.run(body())

    def start(self) -> "RunningAgent":
        self._thread.start()
        assert self._ready.wait(30) and self.error is None, self.error
        deadline = time.monotonic() + 15
        while not self.cfg.socket.exists():
            assert time.monotonic() < deadline, "the agent's socket never appeared"
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.agent is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self._thread.join(30)
        assert not self._thread.is_alive()
        if self.error is not None:
            raise self.error


def usb_on(bus):
    return lambda registry, catalog: UsbBackend(registry, catalog, usb_backend=bus)


def wait_for(predicate, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value
