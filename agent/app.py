"""The agent's composition root: ``Agent.build(cfg, *, backends, uplink)`` and its supervised tasks.

The one place the agent is assembled from its seams (DESIGN.md "Boundaries"):

- ``backends``: one ``DeviceBackend`` factory per kind of hardware
  (``(registry, catalog) -> DeviceBackend``; PC/SC and USB tokens by default,
  ``CARD_ONLY_BACKENDS`` without tokens); each backend's ``monitor()`` becomes a task
  ``monitor:<name>``; a backend with ``snapshot()`` (USB) lists its devices in the local API;
  with the USB backend, token operations (``UpdateToken``, ``agent.api.tokens``) over their own
  journal (``token_journal``) and their recovery on start/insert (task ``token-recovery``);
- ``uplink``: the ``Uplink`` to the personalizer (``agent.ops.uplink``), built
  once from the station config (a gRPC uplink with one long-lived channel), or
  given (tests: an in-memory uplink); operations receive it, never build one;
- the journal (``StationOps``), the local API server (task ``local-api``) and
  recovery on insert (task ``recovery``); with a station config, the station
  certificate's renewal (``station-cert-renewal``) and, when its ``[fleet]`` is
  enabled, the fleet stream (``fleet``: ``agent.fleet.station.run_station``);
  with ``[updates]``, the periodic self-update (``self-update``: ``AgentUpdated``
  stops the agent once a newer build is in place) and, with the USB backend, the token
  releases' check, background download and install when idle (``token-updates``), and with
  ``token_install = "ask"`` the holder's desktop notification (``token-notify``: session D-Bus).

``run(stop)`` starts every task and supervises them: the first one to end (the
``stop`` event, the gRPC server stopping, a monitor dying) starts a graceful
shutdown (server drained with a grace period, tasks cancelled, uplink and
journal closed, socket removed); a task that died with an error is raised as
``AgentStopped``. Adding a task is one ``add_task(name, coroutine_factory)``;
adding a backend is one entry in ``backends``.

Imports ``agent.api``, ``agent.devices``, ``agent.fleet``, ``agent.ops``, ``agent.recovery``,
``agent.uplink`` and ``station_config``; nothing imports it but the CLI and tests.
"""
from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.api.operations import Operations
from agent.api.server import SHUTDOWN_GRACE_S, AgentFacts, AgentLocalService, start_server
from agent.api.tokens import TokenOperations
from agent.devices.backend import DeviceBackend, DeviceLink
from agent.devices.catalog import Catalog
from agent.devices.pcsc_backend import PcscBackend
from agent.devices.registry import DeviceRegistry
from agent.devices.usb import UsbBackend, with_reader
from agent.ops.uplink import Uplink
from agent.recovery import recover_on_insert
from station_config import ROLE_STATION, StationConfig

log = logging.getLogger("agent.app")

BackendFactory = Callable[[DeviceRegistry, Catalog], DeviceBackend]
UplinkFactory = Callable[[StationConfig, str], Uplink]
USB_POLL_S = 0.09   # the USB scan without a hotplug signal (libusb via pyusb): a hotplug seen within 100 ms


def usb_backend(registry: DeviceRegistry, catalog: Catalog) -> UsbBackend:
    return UsbBackend(registry, catalog, poll_s=USB_POLL_S)


DEFAULT_BACKENDS: tuple[BackendFactory, ...] = (PcscBackend, usb_backend)
CARD_ONLY_BACKENDS: tuple[BackendFactory, ...] = (PcscBackend,)   # `cns-agent run --no-tokens`
CARD_BACKEND = "pcsc"   # the backend whose links are card readers (operations, recovery, conformance)


class AgentStopped(Exception):
    """A supervised task ended with an error (or ended when it should not have)."""


class AgentUpdated(Exception):
    """The self-update task swapped in a newer build: the agent stops so that it is started on it."""

    def __init__(self, version: str, detail: str = "") -> None:
        super().__init__(f"agent updated to {version}" + (f" ({detail})" if detail else ""))
        self.version = version


@dataclass(frozen=True)
class AgentConfig:
    socket: Path                          # the local API's Unix socket
    profiles: Path | None = None          # card profile directory (None: the built-in set)
    station: StationConfig | None = None  # enables device operations
    version: str = "0+unknown"
    token_journal: Path | None = None     # journal of token operations (None: beside the station's, else per user)
    updates_dir: Path | None = None       # self-update state: updates/ (TUF) and install/ (builds); None: per user
    update_interval_s: float | None = None   # None: agent.updates.schedule's default (6 h, jittered)


def default_token_journal(cfg: AgentConfig) -> Path:
    if cfg.token_journal is not None:
        return cfg.token_journal
    if cfg.station is not None:
        return cfg.station.station.data_dir / "tokens.db"
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "cns-agent" / "tokens.db"


def default_updates_dir(cfg: AgentConfig) -> Path:
    if cfg.updates_dir is not None:
        return cfg.updates_dir
    return Path(os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")) / "cns-agent"


async def self_update(cfg: AgentConfig) -> None:
    """The task ``self-update`` (issue 18 item 5): at start and then periodically (jittered), install the newest
    published agent build (``SelfUpdater.apply``: verified, swapped, health-checked, rolled back on failure).
    A failed check is logged and retried; an installed build raises ``AgentUpdated`` (the agent stops, and
    the per-user service starts it again on the new build)."""
    from agent.updates.client import UpdateClient
    from agent.updates.schedule import DEFAULT_INTERVAL_S, DEFAULT_JITTER_S, periodic
    from agent.updates.selfupdate import SelfUpdater

    updates, root = cfg.station.updates, default_updates_dir(cfg)
    interval = cfg.update_interval_s or DEFAULT_INTERVAL_S
    installed: asyncio.Queue = asyncio.Queue()

    def check():
        client = UpdateClient(root / "updates", updates.url, proxy=updates.proxy)
        return SelfUpdater(root / "install", client).apply()

    def on_result(out) -> None:
        if out.action == "rolled-back":
            log.warning("self-update: %s", out.detail)
        elif out.action == "updated":
            installed.put_nowait(out)

    checks = asyncio.create_task(periodic(check, interval_s=interval, jitter_s=min(DEFAULT_JITTER_S, interval / 4),
                                          on_result=on_result), name="self-update-checks")
    try:
        out = await installed.get()
    finally:
        checks.cancel()
        await asyncio.gather(checks, return_exceptions=True)
    raise AgentUpdated(out.version, out.detail)


async def token_updates(agent: "Agent", *, url: str, proxy: str | None, state_dir: Path, policy: str,
                        interval_s: float, jitter_s: float, retry_s: float = 60.0) -> None:
    """The task ``token-updates`` (issue 14 item 4): at start and then periodically (jittered), for every
    token plugged in, the newest release of its model newer than the one it runs is downloaded in the
    background (verified, resumable: ``agent.updates.token_releases``) and kept as an offer
    (``agent.token_offers``: serial → (version, manifest)). With ``policy`` "auto" an offer is installed
    when its token is plugged in and idle (``TokenOperations.idle`` with ``token_busy``: no token operation,
    nothing open in the journal, no other PC/SC client on its chip), tried again at every arrival and every
    ``retry_s``; with "ask" it waits in ``agent.approvals`` (the local API's ``ListApprovals`` and ``watch``,
    the desktop notification of the task ``token-notify``) until the holder approves it (then it is
    installed the same way, when idle) or declines it (postponed: ``agent.updates.approvals``); the holder
    may also install it at once with ``cns-agent update apply --token``.
    A failed check or install is logged in one line and tried again later; the agent keeps running."""
    from agent.devices.usb import TokenError
    from agent.ops.errors import OperationError, PreconditionError
    from agent.ops.token_release import installed_from_row
    from agent.updates import token_releases as tr
    from agent.updates.client import UpdateClient
    from agent.updates.schedule import periodic

    offers, wake, loop = agent.token_offers, asyncio.Event(), asyncio.get_running_loop()
    approvals = agent.approvals

    def check() -> dict[str, tuple[str, Path]]:
        client = UpdateClient(state_dir, url, proxy=proxy)
        found = {}
        for row in agent.tokens():
            if row.get("mode") == "runtime" and row.get("model") and row.get("serial"):
                offer = tr.offer(client, row["model"], installed_from_row(row))
                if offer is None:
                    approvals.done(row["serial"])   # up to date (e.g. installed with `update apply`): nothing to ask
                else:
                    found[row["serial"]] = (offer.release.version, Path(tr.fetch(client, offer)["manifest"]))
                    if policy != "auto":    # the holder is asked: what the question shows
                        approvals.offer(row["serial"], row["model"], offer.release.version,
                                        offer.current.version if offer.current else "",
                                        sum(c.length for c in offer.release.components), found[row["serial"]][1])
        return found

    def on_result(found: dict[str, tuple[str, Path]]) -> None:
        for serial, (version, _) in found.items():
            if offers.get(serial, ("",))[0] != version:
                log.info("token %s: release %s downloaded; %s", serial, version,
                         "it is installed when the token is idle" if policy == "auto" else
                         "it waits for the holder's approval (cns-agent update pending --token)")
        offers.update(found)
        wake.set()

    def arrived(kind: str, info) -> None:
        if kind == "arrived":
            loop.call_soon_threadsafe(wake.set)

    def answered(kind: str, p) -> None:
        if kind == "answered":
            loop.call_soon_threadsafe(wake.set)
    checks = asyncio.create_task(periodic(check, interval_s=interval_s, jitter_s=jitter_s, on_result=on_result),
                                 name="token-update-checks")
    unsubscribe = agent.token_ops.usb.subscribe(arrived)
    unsubscribe_answers = approvals.subscribe(answered)
    try:
        while True:
            try:
                async with asyncio.timeout(retry_s):   # not wait_for: 3.11's can lose a cancel
                    await wake.wait()
            except TimeoutError:
                pass
            wake.clear()
            for serial, (version, manifest) in list(offers.items()):
                if policy != "auto" and not approvals.approved(serial, version):
                    continue                  # waiting for the holder, or declined (postponed)
                why = await agent.token_ops.idle(serial, agent.token_busy)
                if why:
                    log.debug("token %s: release %s waits: %s", serial, version, why)
                    continue
                offers.pop(serial, None)
                try:
                    res = await agent.token_ops.install_release(serial, manifest)
                except (PreconditionError, TokenError, OperationError) as exc:
                    log.warning("token %s: release %s not installed: %s", serial, version, exc)
                    continue
                log.info("token %s: release %s %s%s", serial, version, res.state,
                         f" ({res.message})" if res.message else "")
                if res.state == "done":
                    approvals.done(serial)
    finally:
        checks.cancel()
        unsubscribe()
        unsubscribe_answers()
        await asyncio.gather(checks, return_exceptions=True)


def grpc_uplink(cfg: StationConfig, operator_id: str) -> Uplink:
    from agent.uplink.client import PersonalizerClient
    return PersonalizerClient(cfg, operator_id=operator_id)


class Agent:
    def __init__(self, cfg: AgentConfig, *, catalog: Catalog, registry: DeviceRegistry,
                 backends: list[DeviceBackend], ops=None, uplink: Uplink | None = None) -> None:
        self.cfg, self.catalog, self.registry = cfg, catalog, registry
        self.backends = {b.name: b for b in backends}
        self.ops, self.uplink = ops, uplink
        self.operations = Operations(ops, catalog, registry, self.open_link) if ops is not None else None
        usb = next((b for b in backends if isinstance(b, UsbBackend)), None)
        self.token_ops = (TokenOperations(usb, default_token_journal(cfg), agent_version=cfg.version)
                          if usb is not None else None)
        self._tasks: dict[str, Callable[[], Awaitable[None]]] = {}
        self.server = None
        self.token_offers: dict[str, tuple[str, Path]] = {}   # token serial → (release, manifest) downloaded
        from agent.updates.approvals import DEFAULT_POSTPONE_S, Approvals
        updates = cfg.station.updates if cfg.station is not None else None
        self.approvals = Approvals(default_updates_dir(cfg) / "approvals.json",   # releases waiting for the holder
                                   postpone_s=updates.token_postpone_hours * 3600 if updates else DEFAULT_POSTPONE_S)

    @classmethod
    async def build(cls, cfg: AgentConfig, *, backends: Sequence[BackendFactory] = DEFAULT_BACKENDS,
                    uplink: Uplink | UplinkFactory | None = None) -> "Agent":
        """Assemble the agent. ``uplink``: an ``Uplink``, a factory ``(station cfg, operator id) -> Uplink``,
        or None for the gRPC uplink; only used with a station config (device operations)."""
        catalog = Catalog.load(cfg.profiles)
        log.info("loaded %d card model(s): %s", len(catalog.models), ", ".join(catalog.model_ids) or "none")
        registry = DeviceRegistry()
        built = [make(registry, catalog) for make in backends]
        ops = link = None
        if cfg.station is not None:
            # only here: an agent without a station holds no journal of device operations; with one, the
            # operations' modules (cryptography) are imported when an operation runs (agent.ops.station)
            from agent.ops.station import StationOps
            operator_id = os.environ.get("USER") or f"uid-{os.getuid()}"
            if uplink is None or (callable(uplink) and not isinstance(uplink, Uplink)):
                link = (uplink or grpc_uplink)(cfg.station, operator_id)
            else:
                link = uplink
            ops = await StationOps.open(cfg.station, operator_id=operator_id, uplink=link)
            log.info("station %s (%s): device operations enabled, personalizer %s", cfg.station.station.id,
                     cfg.station.station.chamber_code, cfg.station.personalizer.primary)
        agent = cls(cfg, catalog=catalog, registry=registry, backends=built, ops=ops, uplink=link)
        for backend in built:
            agent.add_task(f"monitor:{backend.name}", backend.monitor)
        if agent.token_ops is not None:   # issue 13: unfinished token operations finished on start/insert
            agent.add_task("token-recovery", agent.token_ops.recover)
        if ops is not None:
            retry_s = cfg.station.operations.recovery_retry_seconds
            agent.add_task("recovery", lambda: recover_on_insert(registry, catalog, ops, agent.open_link, retry_s))
            if cfg.station.station.role == ROLE_STATION:   # issue 18: renew the station certificate at start, daily
                from agent.uplink.station_cert import renewal_loop   # no cryptography until a renewal is due
                agent.add_task("station-cert-renewal", lambda: renewal_loop(cfg.station))
            if cfg.station.updates is not None:              # issue 18: signed self-update, periodically
                agent.add_task("self-update", lambda: self_update(cfg))
                if agent.token_ops is not None:                # issue 14: token releases, downloaded and offered
                    from agent.updates.schedule import DEFAULT_INTERVAL_S, DEFAULT_JITTER_S
                    up, every = cfg.station.updates, cfg.update_interval_s or DEFAULT_INTERVAL_S
                    agent.add_task("token-updates", lambda: token_updates(
                        agent, url=up.url, proxy=up.proxy, state_dir=default_updates_dir(cfg) / "updates",
                        policy=up.token_install, interval_s=every, jitter_s=min(DEFAULT_JITTER_S, every / 4)))
                    if up.token_install == "ask":   # issue 14: the holder is asked on the desktop (session D-Bus)
                        from agent.updates.desktop import DesktopNotifier
                        agent.add_task("token-notify", DesktopNotifier(agent.approvals).run)
            fleet = cfg.station.fleet
            if fleet is not None and fleet.enabled:        # issue 15: the agent-opened fleet stream
                from agent.fleet.client import Options
                from agent.fleet.station import run_station
                options = Options(max_backoff=fleet.max_backoff_seconds)
                releases = None
                if cfg.station.updates is not None and agent.token_ops is not None:   # install_release, attested
                    from agent.fleet.releases import ReleaseInstaller
                    releases = ReleaseInstaller(agent, url=cfg.station.updates.url, proxy=cfg.station.updates.proxy,
                                                state_dir=default_updates_dir(cfg) / "updates")
                agent.add_task("fleet", lambda: run_station(cfg.station, registry, version=cfg.version,
                                                            options=options, tokens=agent, releases=releases))
        return agent

    def add_task(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` as the supervised task ``name`` (it should run until cancelled)."""
        if name in self._tasks:
            raise ValueError(f"task {name!r} is already registered")
        self._tasks[name] = factory

    @property
    def task_names(self) -> list[str]:
        return ["local-api", *self._tasks]

    def open_link(self, device: str) -> DeviceLink:
        """A link to the card in reader ``device`` (blocking: call from a worker thread)."""
        return self.backends[CARD_BACKEND].open_link(device)

    def tokens(self) -> list[dict]:
        """The USB tokens the backends see (``snapshot()`` rows of every backend that has one), each with its
        PC/SC reader and the chip's holder where the reader is paired (``agent.devices.usb.with_reader``) and the
        release it runs as a whole (``release``: "" for a mix or a set no release this agent knows names)."""
        _, readers = self.registry.snapshot()
        return [self.with_release(with_reader(row, readers)) for b in self.backends.values()
                if callable(getattr(b, "snapshot", None)) for row in b.snapshot()]

    def with_release(self, row: dict) -> dict:
        """A token row plus ``release``: the newest verified release manifest (downloaded into the update
        state, ``agent.updates.client.known_releases``) whose every component the token has."""
        if row.get("mode") != "runtime" or not row.get("model"):
            return dict(row, release="")
        from agent.ops.token_release import installed_from_row, release_of
        from agent.updates.client import known_releases
        known = known_releases(default_updates_dir(self.cfg) / "updates", row["model"])
        return dict(row, release=release_of(installed_from_row(row), known))

    def token_busy(self, serial: str) -> str | None:
        """Why the token's chip must not be disturbed now (another PC/SC client holds it), or None. The
        chip's reader is paired by the token's serial (``agent.devices.usb.reader_for``)."""
        from agent.devices.pcsc import in_use
        from agent.devices.usb import reader_for
        reader = reader_for(serial, [r.name for r in self.registry.snapshot()[1]])
        if reader is not None and in_use(reader):
            return f"its chip is in use in {reader} (an application has it open)"
        return None

    def subscribe_tokens(self, listener: Callable[[str, dict], None]) -> Callable[[], None]:
        """``listener(kind, row)`` for every token event (arrived | left | changed) of the USB backends, the
        row as ``tokens()``'s; returns the function that unsubscribes."""
        def relay(kind, info) -> None:
            listener(kind, self.with_release(with_reader(info.as_dict(), self.registry.snapshot()[1])))
        removers = [b.subscribe(relay) for b in self.backends.values() if isinstance(b, UsbBackend)]

        def unsubscribe_all() -> None:
            for remove in removers:
                remove()
        return unsubscribe_all

    def _status(self) -> str:
        card = self.backends.get(CARD_BACKEND)
        return card.status if card is not None else "no PC/SC backend"

    async def run(self, stop: asyncio.Event | None = None) -> None:
        stop = stop or asyncio.Event()
        facts = AgentFacts(version=self.cfg.version, socket_path=str(self.cfg.socket),
                           profiles_dir=str(self.cfg.profiles or ""), model_ids=self.catalog.model_ids,
                           pcsc_status=self._status)
        service = AgentLocalService(self.registry, facts, self.operations, self.tokens, self.token_ops,
                                    token_events=self.subscribe_tokens,
                                    approvals=self.approvals if self.token_ops is not None else None)
        self.server = await start_server(self.cfg.socket, service)
        tasks = {asyncio.create_task(stop.wait(), name="stop"),
                 asyncio.create_task(self.server.wait_for_termination(), name="local-api")}
        tasks |= {asyncio.create_task(factory(), name=name) for name, factory in self._tasks.items()}
        log.info("agent running (pid %d): %s", os.getpid(), ", ".join(self.task_names))
        failure: BaseException | None = None
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task.get_name() != "stop":
                    failure = (task.exception() if not task.cancelled() else None) or \
                        RuntimeError(f"task {task.get_name()} ended unexpectedly")
                    log.error("task %s ended: %s", task.get_name(), failure)
        finally:
            log.info("shutting down")
            await self.server.stop(SHUTDOWN_GRACE_S)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            try:
                self.cfg.socket.unlink()
            except FileNotFoundError:
                pass
            await self.close()
            log.info("agent stopped")
        if failure is not None:
            raise AgentStopped(f"agent stopped on an error: {failure}") from failure

    async def close(self) -> None:
        if self.token_ops is not None:
            await self.token_ops.close()
        if self.ops is not None:
            await self.ops.close()
        if self.uplink is not None:
            await self.uplink.close()
