"""The seam between the agent and one kind of hardware: ``DeviceBackend`` and ``DeviceLink``.

A backend (PC/SC readers and cards in ``agent.devices.pcsc_backend``; USB tokens next)
owns two things:

- **monitoring**: ``monitor()`` is a coroutine the composition root (``agent.app``)
  runs as one named, supervised task per backend. It keeps the shared
  ``DeviceRegistry`` current (devices appear and disappear) until it is cancelled,
  and raises if the backend can no longer watch its devices (the agent then stops
  with that error). ``status`` is a one-line health word for ``cns-agent info``.
- **links**: ``open_link(device)`` opens the device named as the registry names it
  and returns a ``DeviceLink``: an ``ApduTransport`` (``transmit``) that is also a
  context of exclusive access. ``with link.transaction(): ...`` holds the device for
  one step, so that no other client of the same hardware (another PC/SC
  application, OpenSC) interleaves commands between the step's commands; outside a
  transaction every command is still atomic by itself. ``close()`` releases it.

Blocking calls (``open_link``, ``transmit``, ``close``) run in worker threads.
Imports nothing of ours beyond the standard library and ``agent.card.transport``.
"""
from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Protocol, runtime_checkable

from agent.card.transport import ApduTransport


@runtime_checkable
class DeviceLink(ApduTransport, Protocol):
    def transaction(self) -> AbstractContextManager[None]:
        """Exclusive access to the device for the ``with`` block (re-entrant)."""

    def close(self) -> None:
        """Release the device; the link is unusable afterwards."""


@runtime_checkable
class DeviceBackend(Protocol):
    name: str          # names the supervised task ("monitor:<name>") and the backend in logs

    @property
    def status(self) -> str:
        """``ok``, ``starting`` or what is wrong, in one line."""

    async def monitor(self) -> None:
        """Keep the registry current until cancelled; raise when monitoring is impossible."""

    def open_link(self, device: str) -> DeviceLink:
        """Open the device named ``device`` (blocking). Raises ``agent.card.errors`` exceptions."""
