"""Randomized renewal fault trials: devices left unusable and duplicate issuances (both must be 0).

Each trial takes a personalized emulated card (zero-latency timing, the emulator's
precomputed key pool), starts the agent's renewal state machine
(``agent.ops.renew.Renewer``) with one fault at a random step, abandons the machine
there as a SIGKILL would (or lets the fault end it), repairs the world (card
reinserted, personalizer and CA back) and runs recovery exactly as the agent does on
start or card insert — without the PIN. Then the card is checked as a user needs it:
every keyset's live certificate is either the old one or the renewed one — all old or
all new —, its key matches and signs with the unchanged PIN (verified against the
certificate), spare slots and the renewal marker are empty, PIN tries are full, no
operation is left open; and the CA issued at most one certificate per keyset for the
renewal (exactly the ones on the card when it ended new).

Faults: ``tear`` (power cut during the step's write), ``drop`` (card pulled after the
write, before its answer; or before the step's first command), ``sw`` (6581 to the
step's main command), ``kill`` (abandoned when the step is journaled begun),
``kill-answered`` (abandoned right after the personalizer's answer arrived, before it
was journaled), ``down`` (personalizer unreachable from that step on), ``ca-error``
(the CA refuses), ``ca-timeout`` (the CA does not answer: the request stays queued and
the agent stops waiting), ``ca-lost`` (the CA issued, its answer was lost).

The personalizer runs in this process without gRPC: the real broker, relay, request
store and embedded CA (RSA-3072) behind a small adapter with the uplink's interface;
the relay is stepped after each call (zero-latency model). Journal and store live on
tmpfs when available.

``--holder``: the same trials over the holder's self-renewal (issue 19 item 2): the attempt goes through
the agent's ``HolderUplink`` and ``HolderCardAdmin`` (the card's proof for card administration) to the
personalizer's ``SelfRenewal`` rules in this process (``benchmarks/_holder.py``: the enrollment port without
gRPC), journaled in the holder's own journal; recovery is the holder's: running ``cns-agent renew --self``
again (``agent.commands.self_renew.run_self_renewal``, PIN typed) while the journal holds an open renewal.
The same checks, plus no open operation and every request of the trial recorded as the holder's.

Usage: scripts/bench renew-faults [--trials N] [--seed S] [--profile MODEL] [--holder]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import dataclasses
import logging
import multiprocessing
import os
import random
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from agent.card.cns import CnsSession
from agent.card.errors import CardRemovedError
from agent.card.issuer import IssuerSession
from agent.card.transport import split_response
from agent.ops.csr import pkcs1_v15_sha256_block
from agent.ops.errors import UplinkError, UplinkUnavailable
from agent.ops.holder import Codes, HolderRecord
from agent.ops.journal import Journal
from agent.ops.personalize import Personalizer
from agent.ops.renew import RenewalPolicy, Renewer, plan
from agent.commands.self_renew import run_self_renewal
from agent.uplink.card_admin import CardAdminClient, HolderCardAdmin
from agent.uplink.self_renewal import HOLDER_STATION
from benchmarks import _holder
from firmware_profiles import load_models
from firmware_profiles.emulator import CardRemovedError as EmuRemoved
from firmware_profiles.emulator import EmulatedCard
from personalizer import config as pconfig
from personalizer import deploy
from personalizer.cardadmin import setup as card_admin_setup
from personalizer.cardadmin.service import CardAdmin
from personalizer.outbox.broker import Broker, ChangeInput, IssueInput, RenewInput
from personalizer.ca.base import CertRef
from personalizer.errors import PersonalizerError
from personalizer.outbox.relay import Relay
from personalizer.server import Daemon, build_ca
from personalizer.edge.self_renewal import SelfRenewal
from personalizer.edge.service import STATE_ENUMS, record_to_proto, status_to_proto
from personalizer.store import SqliteRequestStore
from personalizer.outbox.windows import ServiceCalendar
from tests.support.ca import FaultyCA   # the CA test double (benchmarks use tests/support's fakes)
from tests.support.faults import WRITE_INS, arm_card_fault, step_name

KINDS = ("tear", "drop", "sw", "kill", "kill-answered", "down", "ca-error", "ca-timeout", "ca-lost")
HOLDER = HolderRecord(codice_fiscale="RSSMRA80A01H501U", given_name="Mario", surname="Rossi",
                      birth_date="1980-01-01", sex="M", birth_town="ROMA", issuer="CCIAA di Roma")
REQUESTER = {"station_id": "RM-STATION-01", "chamber_code": "RM", "operator_id": "bench"}
HOLDER_REQUESTER = {"station_id": HOLDER_STATION, "chamber_code": "", "operator_id": "holder"}
CARDS = 32   # personalized cards per worker, renewed in turn


class Abandon(BaseException):
    """A SIGKILL, in process: nothing after the fault point runs."""


class Clock:
    def __init__(self):
        self.t = time.time()

    def __call__(self) -> float:
        return self.t


class LocalCardAdmin(CardAdminClient):
    """The agent's CardAdmin client over the personalizer's real ``CardAdmin`` (its SoftHSM2 token, in
    its own process) in this process; unreachable when the uplink is ``down``."""

    def __init__(self, uplink: "LocalUplink", core: CardAdmin):
        super().__init__(uplink)
        self.core = core

    async def authenticate(self, *, serial, model_id, challenge, kind, op_id, requester, transport_key=False) -> bytes:
        self.client._check()
        try:
            return await self.core.answer(actor="urn:cns:station:" + requester["chamber_code"] + ":"
                                          + requester["station_id"], station_id=requester["station_id"],
                                          chamber_code=requester["chamber_code"],
                                          operator_id=requester["operator_id"], serial=serial, model_id=model_id,
                                          challenge=challenge, operation=kind, operation_id=op_id,
                                          key_version=0 if transport_key else 1)
        except PersonalizerError as exc:
            raise UplinkError(f"personalizer: {exc.code}: {exc}", code=exc.code) from exc


class LocalUplink:
    """The uplink's interface (submit_issue, renew, get_request, watch_request, certificate_status,
    change_status) over the real broker, relay and store in this process; ``down`` makes every call UNAVAILABLE like an unreachable daemon."""

    def __init__(self, broker: Broker, relay: Relay, store: SqliteRequestStore, clock: Clock):
        self.broker, self.relay, self.store, self.clock = broker, relay, store, clock
        self.down = False

    def _check(self):
        if self.down:
            raise UplinkUnavailable("personalizer: UNAVAILABLE: connection refused (benchmark fault)",
                                    code="UNAVAILABLE")

    async def _pump(self):
        for _ in range(4):
            self.clock.t += 1.0
            if not await self.relay.run_once():
                break

    async def _answer(self, rid: str):
        await self._pump()
        self._check()
        return record_to_proto(await self.store.get_request(rid))

    async def _call(self, call, rid: str):
        self._check()
        try:
            await call()
        except PersonalizerError as exc:
            if exc.code == "UNAVAILABLE":
                raise UplinkUnavailable(str(exc), code="UNAVAILABLE") from exc
            raise UplinkError(f"personalizer: {exc.code}: {exc}", code=exc.code) from exc
        return await self._answer(rid)

    async def submit_issue(self, *, request_id, profile, csr_der, holder, card_id, model, requester,
                           ef_dati_personali=b""):
        inp = IssueInput(request_id=request_id, profile=profile, csr_der=csr_der,
                         codice_fiscale=holder["codice_fiscale"], given_name=holder["given_name"],
                         surname=holder["surname"], birth_date=holder["birth_date"], card_id=card_id,
                         card_model=model, station_id=requester["station_id"],
                         chamber_code=requester["chamber_code"], operator_id=requester["operator_id"],
                         ef_dati_personali=ef_dati_personali)
        return await self._call(lambda: self.broker.submit_issue(inp), request_id)

    async def renew(self, *, request_id, profile, csr_der, current_certificate_der, proof_of_possession, requester):
        inp = RenewInput(request_id=request_id, profile=profile, csr_der=csr_der,
                         current_certificate_der=current_certificate_der, proof_of_possession=proof_of_possession,
                         station_id=requester["station_id"], chamber_code=requester["chamber_code"],
                         operator_id=requester["operator_id"])
        return await self._call(lambda: self.broker.submit_renew(inp), request_id)

    async def get_request(self, request_id):
        self._check()
        if await self.store.get_request(request_id) is None:
            raise UplinkError(f"personalizer: NOT_FOUND: no request with id {request_id!r}", code="NOT_FOUND")
        return await self._answer(request_id)

    async def watch_request(self, request_id):
        yield await self.get_request(request_id)

    async def certificate_status(self, *, issuer_dn="", serial_hex="", request_id=""):
        """As GetCertificateStatus by issuer and serial (renewal's undo and superseded revocation ask it)."""
        self._check()
        info = await self.broker.ca.status(CertRef(issuer_dn, serial_hex.upper()))
        if info is None:
            raise UplinkError(f"personalizer: NOT_FOUND: no certificate {serial_hex}", code="NOT_FOUND")
        return status_to_proto(info)

    async def change_status(self, action, *, request_id, issuer_dn, serial_hex, requester, reason=""):
        """As Suspend/Reactivate/Revoke: through the broker's outbox, the relay pumped once."""
        inp = ChangeInput(request_id=request_id, kind=action, ref=CertRef(issuer_dn, serial_hex.upper()),
                          reason=reason, station_id=requester["station_id"], chamber_code=requester["chamber_code"],
                          operator_id=requester["operator_id"])
        self._check()
        try:
            await self.broker.submit_change(inp)
        except PersonalizerError as exc:
            raise UplinkError(f"personalizer: {exc.code}: {exc}", code=exc.code) from exc
        await self._pump()
        self._check()
        rec = await self.store.get_request(request_id)
        out = await self.certificate_status(issuer_dn=issuer_dn, serial_hex=serial_hex)
        out.change_request_id, out.change_state = request_id, STATE_ENUMS[rec.state]
        return out


class Transport:
    def __init__(self, card):
        self.card = card

    def transmit(self, apdu: bytes):
        try:
            return split_response(bytes(self.card.transmit(bytes(apdu))))
        except EmuRemoved as exc:
            raise CardRemovedError(f"emulated card removed: {exc}") from exc


def _connect(card):
    def connect():
        if not card.powered:
            card.power_on()
        return Transport(card)
    return connect


def _arm(kind: str, step: str, card, uplink: LocalUplink, ca: FaultyCA) -> None:
    writes = step_name(step) in WRITE_INS   # the random draws as before: a seed gives the same trials
    if kind == "tear":
        arm_card_fault(kind, step, card, tear_bytes=random.choice((1, 8, 100)) if writes else None)
    elif kind == "drop":
        arm_card_fault(kind, step, card, drop_after_write=writes and random.random() < 0.5)
    elif kind == "sw":
        arm_card_fault(kind, step, card)
    elif kind == "kill":
        raise Abandon()
    elif kind == "down":
        uplink.down = True
    elif kind == "ca-error":
        ca.refuse = 1
    elif kind == "ca-timeout":
        ca.unavailable = True
    elif kind == "ca-lost":
        ca.lose_answers = 1


def _user_check(card, model, pin: str, old: dict[str, bytes], issued_for_op: dict[str, int],
                op_certs: dict[str, bytes]) -> tuple[bool, str]:
    """(usable, why): the card as a user needs it after recovery."""
    card.power_off()
    card.power_on()
    cns = CnsSession(Transport(card), model)
    issuer = IssuerSession(cns, model)
    sides = set()
    for ks in model.keysets:
        if cns.pin_tries_left(ks.name) != model.pin_policy.pin_tries:
            return False, f"{ks.name}: PIN counter changed"
        der = issuer.read_ef(ks.cert_path)
        if der is None:
            return False, f"{ks.name}: no certificate"
        sides.add("old" if der == old[ks.name] else "new" if der == op_certs.get(ks.name) else "other")
        cert = x509.load_der_x509_certificate(der)
        cns.verify_pin(pin, ks.name)
        block = pkcs1_v15_sha256_block(b"user", (cert.public_key().key_size + 7) // 8)
        try:
            cert.public_key().verify(issuer.raw_sign(ks, ks.key_ref, block), b"user", padding.PKCS1v15(),
                                     hashes.SHA256())
        except Exception:
            return False, f"{ks.name}: the live key does not sign for the live certificate"
        if issuer.read_public_key(ks.spare_key_ref) is not None or issuer.read_ef(ks.spare_cert_path) is not None:
            return False, f"{ks.name}: spare slot not cleaned"
    if len(sides) != 1 or "other" in sides:
        return False, f"certificates {sorted(sides)}: not all old or all new"
    if model.paths.renewal_marker and any(cns.read_file(model.paths.renewal_marker)):
        return False, "renewal marker left"
    card.power_off()
    return True, sides.pop()


async def _setup(workdir: Path, model):
    dep = deploy.init_deployment(workdir / "cns", listen="127.0.0.1:0")
    cfg = pconfig.load(dep.server_config)
    clock = Clock()
    cfg = dataclasses.replace(
        cfg, calendar=ServiceCalendar(always_open=True),
        min_rsa_bits={k: min(v, model.rsa_bits) for k, v in cfg.min_rsa_bits.items()},
        broker=dataclasses.replace(cfg.broker, answer_wait_seconds=0.0, renewal_window_days=36500,
                                   retry_initial_seconds=0.001, retry_max_seconds=0.001, breaker_failures=10 ** 9,
                                   breaker_reset_seconds=0.001))
    ca = await FaultyCA(build_ca(cfg)).open()   # the CA test double: counts certificates issued per request id
    store = await SqliteRequestStore.open(workdir / "requests.sqlite", synchronous="OFF", clock=clock)
    daemon = await Daemon.build(cfg, ca=ca, store=store, clock=clock, serve=False)   # relay driven by run_once
    uplink = LocalUplink(daemon.broker, daemon.relay, store, clock)
    ca_cfg = card_admin_setup.load(dep.server_config)
    token = card_admin_setup.open_token(ca_cfg, dep.server_config)
    uplink.admin = LocalCardAdmin(uplink, CardAdmin(records=daemon.broker, token=token, per_minute=6000,
                                                    allow_unlisted_blank=ca_cfg.allow_unlisted_blank_cards))
    uplink.token = token
    # the holder's port: the SelfRenewal rules over the same broker, and a CardAdmin whose per-address bucket
    # lets one bench address renew thousands of times a minute
    uplink.holder = _holder.factory(uplink, SelfRenewal(daemon.broker), CardAdmin(
        records=daemon.broker, token=token, per_minute=10 ** 7, allow_unlisted_blank=ca_cfg.allow_unlisted_blank_cards))
    return ca, daemon, uplink


async def _run(trials: int, seed: int, model_id: str, holder: bool = False) -> dict:
    rng = random.Random(seed)
    random.seed(seed)
    model = load_models()[model_id]
    pin = model.pin_policy.factory_test_pin if model.pin_mode == "preset" else "24681357"
    codes = Codes(pin) if model.pin_mode == "preset" else Codes(pin, "97531864")
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(prefix="bench-renew-faults-", dir=shm if shm.is_dir() else None) as tmp:
        tmp = Path(tmp)
        ca, daemon, uplink = await _setup(tmp, model)
        # tmpfs: durability is not what is measured
        journal = await Journal.open(tmp / "journal.db", synchronous="OFF")
        station_journal = journal
        holder_path = tmp / "holder" / "journal.db"   # the holder's own journal (renew --self --data-dir)
        if holder:
            holder_path.parent.mkdir()
            journal = await Journal.open(holder_path, synchronous="OFF")
        personalize_admin = uplink.admin.for_operation("personalize", REQUESTER)
        admin = uplink.admin.for_operation("renew", REQUESTER)
        # a few personalized cards, each renewed again and again from its snapshot (a card id's
        # certificate history stays short, as in the field)
        cards = []
        for _ in range(min(CARDS, trials) or 1):
            c = EmulatedCard(model)
            p = Personalizer(journal=station_journal, uplink=uplink, requester=REQUESTER,
                             card_admin=personalize_admin)
            out = await p.start(connect=_connect(c), reader="bench", model=model, holder=HOLDER, codes=codes)
            if out.state != "done":
                raise RuntimeError(f"could not personalize a benchmark card: {out.message}")
            cns = CnsSession(Transport(c), model)
            cards.append((c, c.snapshot(), {ks.name: IssuerSession(cns, model).read_ef(ks.cert_path)
                                            for ks in model.keysets}))
        steps = plan(model)
        unusable, duplicates, misattributed, problems = 0, 0, 0, []
        recovery: list[float] = []
        ended = {"old": 0, "new": 0}
        by_kind = {k: 0 for k in KINDS}
        t_start = time.perf_counter()
        for i in range(trials):
            kind, step = rng.choice(KINDS), rng.choice(steps)
            by_kind[kind] += 1
            card, snapshot, old = cards[i % len(cards)]
            card.restore(snapshot)
            ca.issued.clear()
            trial_ops: list[str] = []

            def on_step(s, phase, kind=kind, step=step):
                if s != step:
                    return
                if phase == "begun" and kind != "kill-answered":
                    _arm(kind, step, card, uplink, ca)
                elif phase == "begun" and not s.startswith("renew:"):
                    raise Abandon()          # no answer to lose at this step: killed when it begins
                elif phase == "answered" and kind == "kill-answered":
                    raise Abandon()

            if holder:   # the holder's command, on their own computer: the card authorises it
                h = uplink.holder("in-process", b"")
                r = Renewer(journal=journal, uplink=h, requester=HOLDER_REQUESTER, on_step=on_step,
                            card_admin=HolderCardAdmin(h, codes).for_operation("renew", HOLDER_REQUESTER),
                            policy=RenewalPolicy(window_days=36500), watch_timeout_s=0.0, card_in_thread=True)
            else:
                r = Renewer(journal=journal, uplink=uplink, requester=REQUESTER, card_admin=admin,
                            policy=RenewalPolicy(window_days=36500), watch_timeout_s=0.0, on_step=on_step,
                            card_in_thread=True)   # central card admin: the card thread waits for the loop
            try:
                res = await r.start(connect=_connect(card), reader="bench", model=model, codes=codes)
                trial_ops.append(res.op_id)
            except (Abandon, Exception):   # noqa: B014 - any way the fault ends the attempt
                pass
            # the world is repaired: card reinserted, personalizer and CA back
            card.faults.clear()
            if not card.powered:
                card.power_on()
            uplink.down = False
            ca.reset()
            t0 = time.perf_counter()
            rec = Renewer(journal=journal, uplink=uplink, requester=REQUESTER, card_admin=admin,
                          policy=RenewalPolicy(window_days=36500), watch_timeout_s=0.0,
                          card_in_thread=True)   # central card admin: the card thread waits for the loop
            why = ""
            for _ in range(3):
                open_ops = await journal.open_operations(card.serial)
                if not open_ops:
                    break
                trial_ops.append(open_ops[0].op_id)
                try:
                    if holder:   # the holder runs `cns-agent renew --self` again, PIN typed
                        await run_self_renewal(journal_path=holder_path, endpoint="in-process", trust_pem=b"",
                                               server_name=None, connect=_connect(card), reader="bench", model=model,
                                               codes=codes, progress=lambda s, m: None,
                                               policy=RenewalPolicy(window_days=36500), holder_uplink=uplink.holder)
                    else:
                        await rec.resume(open_ops[0], connect=_connect(card), model=model, codes=None)
                except Exception as exc:   # recorded below if it leaves the card unusable
                    why = f"recovery raised {type(exc).__name__}: {exc}"
            recovery.append(time.perf_counter() - t0)
            still_open = await journal.open_operations(card.serial)
            op_ids = set(trial_ops)
            op_certs: dict[str, bytes] = {}
            for op_id in op_ids:
                op = await journal.get(op_id)
                for ks in model.keysets:
                    if f"cert_{ks.name}" in op.data:
                        op_certs[ks.name] = base64.b64decode(op.data[f"cert_{ks.name}"])
            per_keyset: dict[str, int] = {}
            for rid, n in ca.issued.items():
                ks_name = rid.rsplit("-", 1)[-1]
                per_keyset[ks_name] = per_keyset.get(ks_name, 0) + n
            if holder:
                for rid in ca.issued:
                    rec_h = await daemon.store.get_request(rid)
                    if rec_h is None or rec_h.station_id != HOLDER_STATION or not rec_h.operator_id.startswith("holder:"):
                        problems.append({"trial": i, "kind": kind, "step": step,
                                         "problem": f"request {rid} not recorded as the holder's"})
                        misattributed += 1
            if len(op_ids) > 1 or any(n > 1 for n in per_keyset.values()):
                duplicates += 1
                problems.append({"trial": i, "kind": kind, "step": step, "problem": f"duplicate issuance {per_keyset}"})
            if still_open:
                unusable += 1
                problems.append({"trial": i, "kind": kind, "step": step, "problem": f"left open; {why}"})
                for op in still_open:   # do not let one failure poison the next trials
                    await journal.finish(op, "failed", error="benchmark: left open")
                continue
            ok, side = _user_check(card, model, pin, old, per_keyset, op_certs)
            if not ok:
                unusable += 1
                problems.append({"trial": i, "kind": kind, "step": step, "problem": side + (f"; {why}" if why else "")})
            else:
                ended[side] += 1
                if side == "new":   # the personalizer superseded the old certificates: the next trial of this
                    # card renews from its new ones (renewing the old snapshot again is refused, and the trials
                    # would test that refusal instead of the renewal: 32 of 10,000 ended new before)
                    cards[i % len(cards)] = (card, card.snapshot(), dict(op_certs))
                if side == "new" and any(per_keyset.get(ks.name, 0) != 1 for ks in model.keysets):
                    duplicates += 1
                    problems.append({"trial": i, "kind": kind, "step": step,
                                     "problem": f"new certificates but issuances {per_keyset}"})
        elapsed = time.perf_counter() - t_start
        await journal.close()
        if holder:
            await station_journal.close()
        await daemon.stop()
        uplink.token.close()
    return {"trials": trials, "unusable": unusable, "duplicates": duplicates, "misattributed": misattributed, "ended": ended, "by_kind": by_kind,
            "recovery": recovery, "problems": problems[:20], "elapsed": elapsed, "steps": len(steps)}


def _worker(args: tuple) -> dict:
    logging.getLogger().setLevel(logging.CRITICAL)   # the faults make the relay and emulator log on purpose
    return asyncio.run(_run(*args))


def _merge(parts: list[dict], model_id: str, seed: int, workers: int, wall: float, holder: bool = False) -> dict:
    recovery = sorted(x for p in parts for x in p["recovery"])
    unusable = sum(p["unusable"] for p in parts)
    duplicates = sum(p["duplicates"] for p in parts)
    by_kind = {k: sum(p["by_kind"][k] for p in parts) for k in KINDS}
    mean = sum(recovery) / len(recovery) if recovery else 0.0
    p99 = recovery[min(len(recovery) - 1, int(0.99 * len(recovery)))] if recovery else 0.0
    misattributed = sum(p["misattributed"] for p in parts)
    return {"ok": unusable == 0 and duplicates == 0 and misattributed == 0, "trials": sum(p["trials"] for p in parts),
            "devices_unusable": unusable, "duplicate_issuances": duplicates,
            "ended_old": sum(p["ended"]["old"] for p in parts), "ended_new": sum(p["ended"]["new"] for p in parts),
            "recovery_mean_ms": round(mean * 1000, 3), "recovery_p99_ms": round(p99 * 1000, 3),
            "recovery_unit": "ms of agent recovery per trial (zero-latency card, in-process personalizer)",
            "trials_per_kind": by_kind, "steps": parts[0]["steps"] if parts else 0, "model": model_id,
            "seed": seed, "workers": workers, "elapsed_s": round(wall, 1),
            "problems": [x for p in parts for x in p["problems"]][:20],
            **({"requests_not_the_holders": misattributed,
                "path": "holder self-renewal (HolderUplink -> SelfRenewal rules, recovery: renew --self again)"}
               if holder else {})}


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench renew-faults", description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=None, help="random seed (default: from the clock, printed)")
    ap.add_argument("--profile", default="infocamere-cns-2048", help="card model id")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="processes sharing the trials, each with its own personalizer and journal")
    ap.add_argument("--holder", action="store_true",
                    help="the holder's self-renewal path (HolderUplink, card proof, recovery by running it again)")
    opts = ap.parse_args(argv)
    seed = opts.seed if opts.seed is not None else int(time.time())
    workers = max(1, min(opts.workers, opts.trials))
    shares = [opts.trials // workers + (1 if i < opts.trials % workers else 0) for i in range(workers)]
    t0 = time.perf_counter()
    if workers == 1:
        parts = [_worker((opts.trials, seed, opts.profile, opts.holder))]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            parts = list(pool.map(_worker, [(n, seed + i, opts.profile, opts.holder)
                                            for i, n in enumerate(shares)]))
    return _merge(parts, opts.profile, seed, workers, time.perf_counter() - t0, opts.holder)


__all__ = ["main", "KINDS"]
