"""Watches PC/SC readers and cards and keeps the ``DeviceRegistry`` current.

One supervised thread runs an ``SCardGetStatusChange`` loop: readers that come
and go (re-listed each round, plus the PnP pseudo-reader), cards inserted and
removed (the event counter in the high 16 bits catches a remove+insert between
two rounds). On insertion the ATR picks the model; a supported card is read
(serial, holder) through ``PcscTransport``. A card pulled mid-read is reported
as removed with ``interrupted``; any other failure becomes a card error on that
reader. Nothing raised while reading one card stops the loop; losing pcscd
clears the readers and the loop reconnects with a back-off.

Imports ``agent.card``, ``agent.devices`` and pyscard (``smartcard.scard``).
"""
from __future__ import annotations

import logging
import threading
from typing import Any

from smartcard import scard

from agent.card.errors import CardError, CardRemovedError
from agent.devices.catalog import Catalog, model_id, model_name
from agent.devices.inspect import inspect_card
from agent.devices.pcsc import PNP_READER, PcscContext, PcscTransport, check
from agent.devices.registry import DeviceRegistry

log = logging.getLogger(__name__)

POLL_MS = 1000
BACKOFF_S = (0.2, 0.5, 1.0, 2.0)
_COUNTER_SHIFT = 16


class PcscMonitor:
    """Start with ``start()``, stop with ``stop()``; ``status`` says how PC/SC is doing."""

    def __init__(self, registry: DeviceRegistry, catalog: Catalog, *, poll_ms: int = POLL_MS) -> None:
        self.registry = registry
        self.catalog = catalog
        self.poll_ms = poll_ms
        self.status = "starting"
        self._stop = threading.Event()
        self._ctx: PcscContext | None = None
        self._thread: threading.Thread | None = None
        self.failure: BaseException | None = None  # set if the thread itself died

    # -- lifecycle ---------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pcsc-monitor", daemon=True)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        ctx = self._ctx
        if ctx is not None:
            try:
                ctx.cancel()
            except Exception:  # the context may be gone already
                pass
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        failures = 0
        try:
            while not self._stop.is_set():
                try:
                    self._watch()
                    failures = 0
                except CardError as exc:
                    self.status = f"PC/SC unavailable: {exc}"
                    log.warning("pcsc monitor: %s; retrying", exc)
                except Exception:  # a bug: log it, keep the agent serving, retry
                    self.status = "PC/SC monitor error (see log)"
                    log.exception("pcsc monitor failed; restarting it")
                self.registry.clear()
                delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
                failures += 1
                self._stop.wait(delay)
        except BaseException as exc:  # pragma: no cover - the supervisor in `run` reports it
            self.failure = exc
            raise

    # -- the loop ----------------------------------------------------------
    def _watch(self) -> None:
        ctx = PcscContext()
        self._ctx = ctx
        try:
            self.status = "ok"
            known: dict[str, int] = {}
            pnp_state = scard.SCARD_STATE_UNAWARE
            use_pnp = True
            while not self._stop.is_set():
                readers = ctx.readers()
                for name in [n for n in known if n not in readers]:
                    self.registry.reader_removed(name)
                    del known[name]
                for name in readers:
                    if name not in known:
                        self.registry.reader_added(name)
                        known[name] = scard.SCARD_STATE_UNAWARE
                states = [(name, known[name]) for name in readers]
                if use_pnp:
                    states.append((PNP_READER, pnp_state))
                hresult, new_states = scard.SCardGetStatusChange(ctx.handle, self.poll_ms, states)
                if hresult in (scard.SCARD_E_TIMEOUT, scard.SCARD_E_CANCELLED, scard.SCARD_E_UNKNOWN_READER):
                    continue
                if hresult == scard.SCARD_E_INVALID_PARAMETER and use_pnp:
                    use_pnp = False  # a service without the PnP pseudo-reader: re-list each round instead
                    continue
                check(hresult, "SCardGetStatusChange")
                for name, event_state, atr in new_states:
                    state = event_state & ~scard.SCARD_STATE_CHANGED
                    if name == PNP_READER:
                        pnp_state = state
                        continue
                    if name not in known or not event_state & scard.SCARD_STATE_CHANGED:
                        continue
                    old = known[name]
                    known[name] = state
                    self._reader_changed(ctx, name, old, state, bytes(atr))
        finally:
            self._ctx = None
            ctx.close()

    def _reader_changed(self, ctx: PcscContext, name: str, old: int, new: int, atr: bytes) -> None:
        was = bool(old & scard.SCARD_STATE_PRESENT)
        now = bool(new & scard.SCARD_STATE_PRESENT)
        swapped = was and now and (old >> _COUNTER_SHIFT) != (new >> _COUNTER_SHIFT)
        if was and (not now or swapped):
            self._log(self.registry.card_removed(name))
        if now and (not was or swapped):
            self._card_inserted(ctx, name, atr, mute=bool(new & scard.SCARD_STATE_MUTE))

    def _card_inserted(self, ctx: PcscContext, name: str, atr: bytes, *, mute: bool) -> None:
        model: Any = self.catalog.identify(atr) if atr and not mute else None
        if model is None:
            self._log(self.registry.card_inserted(name, atr, supported=False))
            return
        self._log(self.registry.card_inserted(name, atr, supported=True, model_id=model_id(model),
                                              model_name=model_name(model)))
        try:
            with PcscTransport(ctx, name) as transport:
                found = inspect_card(transport, model)
        except CardRemovedError as exc:
            log.info("card in %s pulled while being read: %s", name, exc)
            self._log(self.registry.card_removed(name, interrupted=True))
        except CardError as exc:
            self._log(self.registry.card_error(name, str(exc)))
        except Exception as exc:  # a bug in our reading code must not stop the monitor
            log.exception("reading the card in %s failed", name)
            self._log(self.registry.card_error(name, f"internal error: {type(exc).__name__}"))
        else:
            self._log(self.registry.card_read(name, serial=found.serial, holder_label=found.holder_label,
                                              blank=found.blank))

    @staticmethod
    def _log(event: object) -> None:
        if event is not None:
            log.info("device event %s", event.describe())  # type: ignore[attr-defined]
