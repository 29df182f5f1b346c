"""What one station needs to run device operations: journal, uplink, issuer keys, requester.

``StationOps`` is built from a ``station_config.StationConfig`` and a card
``Catalog``; the local API and the CLI call ``personalize`` and ``recover`` on
it. Card access goes through a ``connect(reader) -> ApduTransport`` callable
(PC/SC in the agent, in-process emulation in tests). Issuer (admin) keys come
from the station's ``[cards] admin_keys`` file, or — only when
``allow_test_admin_keys`` is set — from the TEST key a model states for its
emulated cards. Imports ``agent.ops``, ``agent.uplink``, ``station_config``.
"""
from __future__ import annotations

import asyncio
import logging
import os
import tomllib
from pathlib import Path
from typing import Any, Callable

from agent.card.transport import ApduTransport
from agent.ops.errors import OperationError, PreconditionError
from agent.ops.holder import Codes, HolderRecord
from agent.ops.journal import Journal
from agent.ops.personalize import Outcome, Personalizer
from agent.ops import renew as _renew
from agent.ops.renew import RenewalPolicy, Renewer
from agent.uplink.client import PersonalizerClient
from station_config import StationConfig

log = logging.getLogger("cns.agent.ops")

Connect = Callable[[str], ApduTransport]


class StationOps:
    def __init__(self, cfg: StationConfig, journal: Journal, *, operator_id: str | None = None,
                 renewal_policy: RenewalPolicy | None = None, watch_timeout_s: float | None = None):
        self.cfg = cfg
        self.journal = journal
        self.renewal_policy = renewal_policy or RenewalPolicy.from_env(cfg.renewal.window_days)
        # how long one attempt follows a queued request before leaving the operation open (retried later)
        self.watch_timeout_s = watch_timeout_s or float(os.environ.get("CNS_AGENT_WATCH_TIMEOUT_S", "600"))
        self.operator_id = operator_id or os.environ.get("USER") or f"uid-{os.getuid()}"
        self._admin_keys = self._load_admin_keys()
        self._lock = asyncio.Lock()   # one device operation at a time per agent

    @classmethod
    async def open(cls, cfg: StationConfig, **kw) -> "StationOps":
        return cls(cfg, await Journal.open(cfg.station.data_dir / "journal.db"), **kw)

    async def close(self) -> None:
        await self.journal.close()

    def _load_admin_keys(self) -> dict[str, bytes]:
        path = self.cfg.cards.admin_keys
        if path is None:
            return {}
        try:
            table = tomllib.loads(Path(path).read_text())
            return {k: bytes.fromhex(v) for k, v in table.items()}
        except (OSError, ValueError, TypeError, tomllib.TOMLDecodeError) as exc:
            raise OperationError(f"{path}: issuer keys unreadable: expected <model id> = \"<32 hex digits>\" lines"
                                 f" ({type(exc).__name__})") from None

    def admin_key_for(self, model) -> bytes:
        key = self._admin_keys.get(model.id)
        if key is None and self.cfg.cards.allow_test_admin_keys:
            key = model.dialect.admin_test_key
        if key is None or len(key) != 16:
            raise PreconditionError(f"no issuer key for card model {model.id}: add it to the station's "
                                    f"[cards] admin_keys file ({self.cfg.source})")
        return key

    @property
    def requester(self) -> dict[str, str]:
        return {"station_id": self.cfg.station.id, "chamber_code": self.cfg.station.chamber_code,
                "operator_id": self.operator_id}

    def _personalizer(self, uplink, progress) -> Personalizer:
        return Personalizer(journal=self.journal, uplink=uplink, requester=self.requester,
                            admin_key_for=self.admin_key_for, progress=progress,
                            watch_timeout_s=self.watch_timeout_s)

    def _renewer(self, uplink, progress) -> Renewer:
        return Renewer(journal=self.journal, uplink=uplink, requester=self.requester,
                       admin_key_for=self.admin_key_for, progress=progress, policy=self.renewal_policy,
                       watch_timeout_s=self.watch_timeout_s)

    async def personalize(self, *, connect: Connect, reader: str, model, holder: HolderRecord, codes: Codes,
                          progress: Callable[[str, str], None] | None = None) -> Outcome:
        async with self._lock, _Links(connect, reader) as links:
            async with PersonalizerClient(self.cfg, operator_id=self.operator_id) as uplink:
                return await self._personalizer(uplink, progress).start(
                    connect=links.open, reader=reader, model=model, holder=holder, codes=codes)

    async def renew(self, *, connect: Connect, reader: str, model, codes: Codes,
                    progress: Callable[[str, str], None] | None = None) -> _renew.Outcome:
        """Renew both certificates of the personalized card in ``reader`` (or finish its open renewal)."""
        async with self._lock, _Links(connect, reader) as links:
            async with PersonalizerClient(self.cfg, operator_id=self.operator_id) as uplink:
                return await self._renewer(uplink, progress).start(connect=links.open, reader=reader, model=model,
                                                                   codes=codes)

    async def recover(self, *, connect: Connect, reader: str, card_serial: str, model,
                      codes: Codes | None = None, progress=None) -> Outcome | _renew.Outcome | None:
        """Finish or undo the open operation of a card just seen (agent start, card insert):
        personalizations and renewals alike, each by its own resume rules."""
        if not await self.journal.open_operations(card_serial):
            return None
        async with self._lock, _Links(connect, reader) as links:
            ops = await self.journal.open_operations(card_serial)   # again, under the lock: it may have finished
            if not ops:
                return None
            async with PersonalizerClient(self.cfg, operator_id=self.operator_id) as uplink:
                runner = self._renewer(uplink, progress) if ops[0].kind == _renew.KIND \
                    else self._personalizer(uplink, progress)
                out = await runner.resume(ops[0], connect=links.open, model=model, codes=codes)
        log.info("recovered %s on card %s: %s %s", ops[0].kind, card_serial, out.state, out.message)
        return out

    async def open_operations(self) -> list[Any]:
        return await self.journal.open_operations()


class _Links:
    """Opens card connections for one operation and closes them all at its end."""

    def __init__(self, connect: Connect, reader: str):
        self.connect, self.reader, self.opened = connect, reader, []

    def open(self) -> ApduTransport:
        link = self.connect(self.reader)
        self.opened.append(link)
        return link

    async def __aenter__(self) -> "_Links":
        return self

    async def __aexit__(self, *exc) -> None:
        for link in self.opened:
            close = getattr(link, "close", None)
            if close is not None:
                try:
                    await asyncio.to_thread(close)
                except Exception:  # the card may be gone already
                    pass
