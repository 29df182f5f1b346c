"""Renewal of both certificates of a personalized CNS card, as a journaled state machine.

The card stays usable at every instant: new keys and certificates go to the
spare slots (firmware_profiles/SCHEMA.md §5); the live ones are untouched until
ONE atomic ``SWITCH KEYSET`` swaps every keyset at once; the old keys and
certificates (now in the spare slots) are removed last.

Before anything is written: the current certificates are read and the renewal
window checked (``RenewalPolicy``: opens ``window_days`` before the earliest
expiry; refused when a new certificate would outlive the device's
``device_life_years``), and the holder's PIN is verified for every keyset.
Nothing is journaled or written when this fails.

The plan (``build_plan``), run by the step engine (``agent.ops.engine``: each step
journaled before it runs, forward or undo decided by ``decide`` from the journal):

    mark                      EF_RenewalMarker := "CNSRENEW" + operation id  (models that have it)
    generate-key:CNS0/CNS1    key pair generated in the keyset's spare slot
    csr:CNS0/CNS1             PKCS#10 signed by the NEW key, and the proof of possession:
                              the CURRENT key's signature over request_id || csr_der (PIN verified)
    renew:CNS0/CNS1           Renew with request id ``renew-<op id>-<keyset>`` (a resume first
                              asks for that id, so a request is never submitted twice)
    write-cert:CNS0/CNS1      the new certificate into the spare certificate EF, read back
    verify                    read back + spare key == certificate key; with the PIN at hand a
                              test signature by each new key checked against its certificate
    switch                    SWITCH KEYSET for all keysets in one command; idempotent by
                              looking first: live key == new certificate's key → already done
    cleanup                   ERASE KEY and DELETE FILE of the spare slots (the old ones)
    unmark                    EF_RenewalMarker cleared
    revoke-superseded         the replaced (old) certificates revoked, reason superseded, through the
                              personalizer's outbox (``agent.ops.revoke_orphans``; idempotent request ids)

Resume (after a pulled card, a SIGKILL, a torn write, an unreachable personalizer, a
CA error, timeout or lost answer): ``switch`` is the point of no return (the card tells
whether it switched: live key vs the new certificate, so a switch never runs twice
blindly); a ``renew:*`` begun goes forward (the stored result is fetched by request id,
never a second issuance); before that, without the PIN, undo. The undo (before
``switch`` only) empties the spare slots and clears the marker (the live keyset was
never touched), also after a refusal (FAILED, INVALID_ARGUMENT, CANCELLED by central IT,
an answer without a certificate for the new key: nothing is written); then every
certificate issued for the operation is revoked (``revoke-orphans``,
cessationOfOperation), the operation open until the personalizer confirms. The
personalizer unreachable (or ``revoke-superseded`` not accepted yet, or a request still
queued after ``watch_timeout_s``): the operation stays open, retried on the next agent
start or card insert with the same request ids.

A card with a renewal marker but no open operation in this journal (journal
lost, another station) has its spare slots cleaned before a new renewal starts.

The holder's PIN and PUK are never changed; the PIN lives in ``Codes`` for the
call only and never reaches the journal, a log or the network. Imports
``agent.card``, ``agent.ops``; the uplink and the PKCS#11 check (``agent.ops.p11check``, run after
a finished renewal; its answer is ``Outcome.pkcs11``) are passed in; card I/O runs in a worker thread.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import os
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from agent.card.transport import ApduTransport
from agent.ops.cardlink import b64 as _b64, held, open_link, same_key as _same_key, spki as _spki, unb64 as _unb64
from agent.ops.engine import UNDO_STEP, Engine, Plan, Result, Step, actions
from agent.ops.csr import build_csr, pkcs1_v15_sha256_block
from agent.ops.errors import OperationError, PreconditionError, UplinkError, UplinkUnavailable, VerificationError
from agent.ops.follow import STATE_FAILED, STATE_ISSUED, find_or_none, follow
from agent.ops.holder import Codes
from agent.ops.journal import DONE, UNDONE, Journal, Operation
from agent.ops.p11check import IN_PROCESS
from agent.ops.revoke_orphans import Orphan, revoke_orphans
from agent.ops.uplink import refused
from cns_spec import requests, validity
from cns_spec.profiles import PROFILE_OF_KEYSET

log = logging.getLogger("cns.agent.renew")

KIND = "renew"
STATE_CANCELLED = requests.CODE_CANCELLED   # central IT cancelled it (cnsctl queue cancel)
SUPERSEDED = "superseded"                # RFC 5280 reason of the certificates a renewal replaced
MARKER_MAGIC = b"CNSRENEW"
DEFAULT_WINDOW_DAYS = validity.DEFAULT_RENEWAL_WINDOW_DAYS
DEFAULT_DEVICE_LIFE_YEARS = validity.DEVICE_LIFE_YEARS


@dataclass(frozen=True)
class RenewalPolicy:
    """The agent's view of the personalizer's rules (the personalizer has the last word)."""
    window_days: int = DEFAULT_WINDOW_DAYS          # renewal opens this many days before expiry
    device_life_years: int = DEFAULT_DEVICE_LIFE_YEARS


@dataclass
class Outcome:
    op_id: str
    card_serial: str
    state: str                         # done | undone | open
    holder_label: str = ""
    certificates: dict[str, bytes] = field(default_factory=dict)
    test_signatures: bool = False
    message: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    pkcs11: str = "not available: the operation did not finish"   # agent.ops.p11check: verified | not available: … | failed: …

    def as_dict(self) -> dict[str, Any]:
        subjects = {ks: x509.load_der_x509_certificate(der).subject.rfc4514_string()
                    for ks, der in self.certificates.items()}
        serials = {ks: f"{x509.load_der_x509_certificate(der).serial_number:X}"
                   for ks, der in self.certificates.items()}
        return {"op_id": self.op_id, "card_serial": self.card_serial, "state": self.state,
                "holder_label": self.holder_label, "certificate_subjects": subjects,
                "certificate_serials": serials, "test_signatures": self.test_signatures,
                "message": self.message, "stage_seconds": {k: round(v, 6) for k, v in self.stage_seconds.items()},
                "pkcs11": self.pkcs11}


def marker_bytes(op_id: str, size: int) -> bytes:
    raw = MARKER_MAGIC + uuid.UUID(op_id).bytes
    return raw + bytes(size - len(raw))


def parse_marker(raw: bytes | None) -> str | None:
    """The operation id a renewal marker names; None when clear (or unreadable)."""
    if not raw or not raw.startswith(MARKER_MAGIC) or len(raw) < len(MARKER_MAGIC) + 16:
        return None
    return str(uuid.UUID(bytes=bytes(raw[len(MARKER_MAGIC):len(MARKER_MAGIC) + 16])))


def check_window(certs: dict[str, x509.Certificate], policy: RenewalPolicy, now: _dt.datetime,
                 first_issued: _dt.datetime | None = None) -> None:
    """Refuse (``PreconditionError`` with the reason) a renewal outside the window or beyond the device's life."""
    expiry = min(c.not_valid_after_utc for c in certs.values())
    if expiry <= now:
        raise PreconditionError(f"the card's certificates expired on {expiry.date().isoformat()}: an expired "
                                "certificate cannot be renewed; issue a new card")
    opens = validity.renewal_opens(expiry, _dt.timedelta(days=policy.window_days))
    if now < opens:
        raise PreconditionError(f"renewal opens {opens.date().isoformat()} ({policy.window_days} days before the "
                                f"certificates expire on {expiry.date().isoformat()}); try again then")
    first = first_issued or min(c.not_valid_before_utc for c in certs.values())
    new_validity = max(c.not_valid_after_utc - c.not_valid_before_utc for c in certs.values())
    end_of_life = validity.device_end_of_life(first, policy.device_life_years)
    if validity.outlives_device(now, new_validity, first, policy.device_life_years):
        raise PreconditionError(
            f"renewal refused: new certificates would be valid until {(now + new_validity).date().isoformat()}, beyond "
            f"the device's {policy.device_life_years}-year life ending {end_of_life.date().isoformat()} (first "
            f"issued {first.date().isoformat()}); issue a new card")


def _issue_date(raw: str) -> _dt.datetime | None:
    try:
        return _dt.datetime.strptime(raw.strip(), "%d%m%Y").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return None


WITHOUT_PIN = ("resumed without the holder's PIN before the requests were signed; the old certificates stay "
               "in use")


def build_plan(model, runner=None) -> Plan:
    """The renewal of ``model`` as a plan (``runner``: the run's actions; None: for ``decide``)."""
    fwd, rev = actions(runner)
    names = [ks.name for ks in model.keysets]
    marker = bool(model.paths.renewal_marker)
    steps = [Step("mark", fwd("mark"), rev("mark"))] if marker else []
    steps += [Step(f"generate-key:{n}", fwd(f"generate-key:{n}"), rev(f"generate-key:{n}")) for n in names]
    steps += [Step(f"csr:{n}", fwd(f"csr:{n}"), needs_codes=True) for n in names]
    steps += [Step(f"renew:{n}", fwd(f"renew:{n}"), submits=n,
                   detail=lambda op, n=n: {"request_id": op.data["request_ids"][n]}) for n in names]
    steps += [Step(f"write-cert:{n}", fwd(f"write-cert:{n}"), rev(f"write-cert:{n}")) for n in names]
    steps += [Step("verify", fwd("verify")), Step("switch", fwd("switch"), point_of_no_return=True),
              Step("cleanup", fwd("cleanup"))]
    steps += [Step("unmark", fwd("unmark"))] if marker else []
    steps += [Step("revoke-superseded", fwd("revoke-superseded"))]
    revoke = Step("revoke-orphans", fwd("revoke-orphans"),
                  detail=lambda op: {"request_ids": list(op.data.get("request_ids", {}).values())})
    return Plan(KIND, tuple(steps), after_undo=(revoke,), noun="renewal", without_codes=WITHOUT_PIN,
                undo_done=lambda op: {"orphaned_requests": [op.data["request_ids"][n] for n in op.data.get(
                    "request_ids", {}) if f"cert_{n}" in op.data]},
                undo_on=(_Refused, VerificationError), hold_on=(UplinkUnavailable,))


def plan(model) -> list[str]:
    """The renewal's step names, in order."""
    return build_plan(model).names


class _Refused(Exception):
    pass


class Renewer:
    """Runs and resumes renewals for one station (same seams as ``Personalizer``).

    ``connect()`` opens the card and returns an ``ApduTransport``; ``uplink`` is an
    open ``PersonalizerClient``; ``card_admin`` answers the card's issuer challenges (central);
    ``now()`` the current time (UTC); ``on_step(step, phase)`` is a test seam called
    after a step is journaled begun, when a request's answer arrived (``answered``) and
    after a step is journaled done. ``card_in_thread=False`` runs card I/O on the event
    loop (only for a zero-latency in-process card, as the benchmark uses).
    """

    def __init__(self, *, journal: Journal, uplink, requester: dict[str, str],
                 card_admin, progress: Callable[[str, str], None] | None = None,
                 policy: RenewalPolicy = RenewalPolicy(), watch_timeout_s: float = 600.0,
                 now: Callable[[], _dt.datetime] | None = None,
                 on_step: Callable[[str, str], None] | None = None, card_in_thread: bool = True,
                 pkcs11=None):
        self.journal = journal
        self.uplink = uplink
        self.requester = dict(requester)
        self.card_admin = card_admin
        self.progress = progress or (lambda step, msg: None)
        self.policy = policy
        self.watch_timeout_s = watch_timeout_s
        self.now = now or (lambda: _dt.datetime.now(_dt.timezone.utc))
        self.on_step = on_step or (lambda step, phase: None)
        self.card_in_thread = card_in_thread   # False only for a zero-latency in-process card (benchmarks)
        self.pkcs11 = pkcs11 or IN_PROCESS     # agent.ops.p11check: the card as PKCS#11 applications see it
        self.stage: dict[str, float] = {}

    async def _timed(self, stage: str, fn, *args, **kwargs):
        loop = asyncio.get_running_loop()
        t = loop.time()
        try:
            if asyncio.iscoroutinefunction(fn):
                return await fn(*args, **kwargs)
            if not self.card_in_thread:
                return fn(*args, **kwargs)
            return await asyncio.to_thread(fn, *args, **kwargs)
        finally:
            self.stage[stage] = self.stage.get(stage, 0.0) + loop.time() - t

    async def _card(self, link, fn, *args):
        """Card work (one step, or a check before the operation): ``fn`` in the card worker thread inside
        ``link.transaction()`` (agent.ops.cardlink.held): no other client's command lands in between, and the
        card is released as soon as ``fn`` returns (never held across a wait for the personalizer)."""
        return await self._timed("card", held(link, fn), *args)

    # -- entry points -------------------------------------------------------------------
    async def start(self, *, connect: Callable[[], ApduTransport], reader: str, model, codes: Codes) -> Outcome:
        self.stage = {}
        link = await self._timed("card", open_link, connect, model)
        serial = await self._card(link, link.cns.read_serial)
        open_ops = await self.journal.open_operations(serial)
        if open_ops:
            if open_ops[0].kind != KIND:
                raise PreconditionError(f"card {serial} has an unfinished {open_ops[0].kind} operation "
                                        f"{open_ops[0].op_id}; it is finished or undone first (reinsert the card)")
            return await self.resume(open_ops[0], connect=connect, model=model, codes=codes, link=link)
        facts = await self._card(link, self._precheck, link, model, codes)
        if facts.pop("stale_marker"):
            self.progress("cleanup", f"card {serial}: clearing what an interrupted renewal left in the spare slots")
            await self._card(link, self._clean_spares, link, model, True)
        op = await self.journal.begin_operation(kind=KIND, card_serial=serial, model_id=model.id, reader=reader,
                                                data={"requester": self.requester, **facts})
        op.data["request_ids"] = {ks.name: f"renew-{op.op_id}-{ks.name}" for ks in model.keysets}
        self.progress("start", f"card {serial}: renewal {op.op_id} for {facts['holder_label'] or 'the holder'}")
        return await self._drive(op, link, model, codes)

    async def resume(self, op: Operation, *, connect: Callable[[], ApduTransport], model,
                     codes: Codes | None = None, link=None) -> Outcome:
        """Finish or undo an open renewal (agent start, card insert, operator retry)."""
        if link is None:
            self.stage = {}
            link = await self._timed("card", open_link, connect, model)
            serial = await self._card(link, link.cns.read_serial)
            if serial != op.card_serial:
                raise PreconditionError(f"operation {op.op_id} is for card {op.card_serial}, not {serial}")
        self.requester = dict(op.data.get("requester") or self.requester)   # same payload on every retry
        self.progress("resume", f"card {op.card_serial}: resuming renewal {op.op_id} after step {op.step}")
        return await self._drive(op, link, model, codes)

    # -- the plan, run by the engine ----------------------------------------------------
    def _engine(self, op: Operation) -> Engine:
        def on_step(step: str, phase: str) -> None:
            if (step, phase) == ("undo", "begun"):
                self.progress("undo", f"card {op.card_serial}: undoing renewal {op.op_id}: "
                                      f"{op.data.get('undo_reason', '')}")
            self.on_step(step, phase)
        return Engine(self.journal, on_step=on_step)

    async def _drive(self, op: Operation, link, model, codes: Codes | None) -> Outcome:
        plan = build_plan(model, _Actions(self, link, model, codes))
        return await self._outcome(op, await self._engine(op).run(plan, op, codes_at_hand=codes is not None),
                                   model, codes)

    async def undo(self, op: Operation, link, model, reason: str) -> Outcome:
        """Back to the old keyset, then every certificate issued for this renewal revoked (``discard``)."""
        plan = build_plan(model, _Actions(self, link, model, None))
        return await self._outcome(op, await self._engine(op).undo(plan, op, reason), model, None)

    async def _outcome(self, op: Operation, res: Result, model, codes: Codes | None) -> Outcome:
        if res.state == "open" and res.step == "revoke-orphans":
            msg = (f"renewal {op.op_id} undone on the card ({res.reason}); the old certificates stay in use. "
                   f"Revoking the certificates issued for it waits: {res.error}; kept in the journal and retried on "
                   "the next agent start or card insert")
            self.progress("undo", msg)
            return Outcome(op.op_id, op.card_serial, "open", op.data.get("holder_label", ""), message=msg,
                           stage_seconds=dict(self.stage))
        if res.state == "open" and res.step == UNDO_STEP:   # the card's issuer key is central (issue 12)
            msg = (f"undoing renewal {op.op_id} ({res.reason}): the old certificates stay in use; emptying the "
                   f"card's spare slots and revoking what was issued need the personalizer, which is "
                   f"unreachable ({res.error}); kept in the journal and retried on the next agent start or card insert")
            self.progress("undo", msg)
            return Outcome(op.op_id, op.card_serial, "open", op.data.get("holder_label", ""), message=msg,
                           stage_seconds=dict(self.stage))
        if res.state == "open":
            if res.step == "revoke-superseded":
                msg = (f"card {op.card_serial} renewed: the new certificates are in use; revoking the replaced "
                       f"ones waits for the personalizer (journaled, retried on the next agent start or card "
                       f"insert): {res.error}")
            else:
                msg = (f"personalizer unreachable or request queued; renewal {op.op_id} kept open, the card "
                       f"keeps working with its current certificates: {res.error}")
            self.progress(res.step or "", msg)
            return Outcome(op.op_id, op.card_serial, "open", message=msg, stage_seconds=dict(self.stage))
        if res.state == UNDONE:
            results = op.data.get("orphans", [])
            errors = [f"{r['serial_hex'] or r['source']}: {r['error']}" for r in results if r["outcome"] == "error"]
            message = res.reason + ("; NOT revoked (ask central IT): " + "; ".join(errors) if errors else "")
            revoked = [r["serial_hex"] for r in results if r["outcome"] in ("revoked", "already")]
            if revoked:
                message += f"; certificate(s) issued for it revoked (cessationOfOperation): {', '.join(revoked)}"
            self.progress("undone", f"card {op.card_serial}: renewal {op.op_id} undone, the old certificates stay "
                                    "in use")
            return Outcome(op.op_id, op.card_serial, UNDONE, op.data.get("holder_label", ""), message=message,
                           stage_seconds=dict(self.stage), pkcs11="not available: the renewal was undone")
        certs = {ks.name: _unb64(op.data[f"cert_{ks.name}"]) for ks in model.keysets}
        refused = [r for r in op.data.get("superseded", []) if r.get("outcome") == "error"]
        message = "; ".join(f"the replaced certificate {r['serial_hex'] or r['source']} was NOT revoked: "
                            f"{r['error']} (ask central IT to revoke it)" for r in refused)
        if op.data.get("renewed_since"):
            message = "; ".join([f"renewal {op.op_id} closed: the card was renewed again since (its live "
                                 "certificates are not this renewal's) and was not touched; the certificates this "
                                 "renewal replaced are revoked (superseded)", *([message] if message else [])])
            self.progress("done", message)
            return Outcome(op.op_id, op.card_serial, DONE, op.data.get("holder_label", ""), message=message,
                           stage_seconds=dict(self.stage), pkcs11="not available: the card was renewed again since")
        self.progress("done", f"card {op.card_serial} renewed: new certificates in use"
                      + ("; the replaced ones are revoked (superseded)" if not refused else f"; {message}"))
        pkcs11 = await self._pkcs11(op, certs, codes)
        return Outcome(op.op_id, op.card_serial, DONE, op.data.get("holder_label", ""), certs,
                       bool(op.data.get("test_signatures")), message=message, stage_seconds=dict(self.stage),
                       pkcs11=pkcs11)

    async def _pkcs11(self, op: Operation, certs: dict[str, bytes], codes: Codes | None) -> str:
        """The card through OpenSC's PKCS#11 module, as holders' applications will open it (agent.ops.p11check)."""
        self.progress("pkcs11", "checking the card through PKCS#11 (OpenSC), as holders' applications see it")
        result = await self._timed("pkcs11", self.pkcs11.check, reader=op.reader, certificates=certs,
                                   pin=codes.pin if codes is not None else None)
        self.progress("pkcs11", f"PKCS#11: {result}")
        if result.startswith("failed"):
            log.warning("card %s after renewal %s: PKCS#11 check %s", op.card_serial, op.op_id, result)
        return result

    # -- card side (worker thread) ------------------------------------------------------
    def _admin_then(self, link, model, fn, *args):
        link.issuer.authenticate(self.card_admin)
        return fn(*args)

    def _precheck(self, link, model, codes: Codes) -> dict[str, Any]:
        """Read-only: current certificates and keys, window, PIN. Raises before anything is written."""
        certs, data = {}, {}
        for ks in model.keysets:
            der = link.issuer.read_ef(ks.cert_path)
            if der is None:
                raise PreconditionError(f"the card carries no {ks.name} certificate: it is not personalized "
                                        "(personalize it instead)")
            try:
                cert = x509.load_der_x509_certificate(der)
            except ValueError:
                raise PreconditionError(f"the {ks.name} certificate on the card is unreadable: the card cannot "
                                        "be renewed (issue a new card)") from None
            live = link.issuer.read_public_key(ks.key_ref)
            if not _same_key(live, cert.public_key()):
                raise PreconditionError(f"the {ks.name} key on the card does not match its certificate: the card "
                                        "cannot be renewed (issue a new card)")
            certs[ks.name] = cert
            data[f"current_{ks.name}"] = _b64(der)
            data[f"bits_{ks.name}"] = cert.public_key().key_size
        pd = link.cns.read_personal_data()
        first = _issue_date(pd.issue_date) if pd is not None else None
        check_window(certs, self.policy, self.now(), first)
        for ks in model.keysets:
            link.cns.verify_pin(codes.pin, ks.name)   # a wrong PIN stops here, before anything is written
        stale = False
        if model.paths.renewal_marker:
            raw = link.cns.read_file(model.paths.renewal_marker)
            data["marker_size"] = len(raw)
            stale = parse_marker(raw) is not None
        data["holder_label"] = pd.holder_label.upper() if pd is not None else ""
        data["stale_marker"] = stale
        return data

    def _make_csr(self, link, model, ks, op: Operation, codes: Codes) -> tuple[bytes, bytes]:
        pub = serialization.load_der_public_key(_unb64(op.data[f"pubkey_{ks.name}"]))
        if not _same_key(link.issuer.read_public_key(ks.spare_key_ref), pub):
            raise VerificationError(f"spare slot {ks.spare_key_ref:02X} no longer holds the new {ks.name} key",
                                    op_id=op.op_id)
        current = x509.load_der_x509_certificate(_unb64(op.data[f"current_{ks.name}"]))
        link.cns.verify_pin(codes.pin, ks.name)
        subject = _subject_of(current)
        csr = build_csr(pub, subject, lambda block: link.issuer.raw_sign(ks, ks.spare_key_ref, block))
        rid = op.data["request_ids"][ks.name]
        nbytes = (current.public_key().key_size + 7) // 8
        pop = link.issuer.raw_sign(ks, ks.key_ref, pkcs1_v15_sha256_block(rid.encode("utf-8") + csr, nbytes))
        try:
            current.public_key().verify(pop, rid.encode("utf-8") + csr, padding.PKCS1v15(), hashes.SHA256())
        except Exception as exc:
            raise VerificationError(f"the current {ks.name} key's proof of possession does not verify with the "
                                    "current certificate", op_id=op.op_id) from exc
        return csr, pop

    def _verify(self, link, model, op: Operation, codes: Codes | None) -> bool:
        for ks in model.keysets:
            der = _unb64(op.data[f"cert_{ks.name}"])
            if link.issuer.read_ef(ks.spare_cert_path) != der:
                raise VerificationError(f"the new {ks.name} certificate does not read back as written",
                                        op_id=op.op_id)
            cert = x509.load_der_x509_certificate(der)
            if not _same_key(link.issuer.read_public_key(ks.spare_key_ref), cert.public_key()):
                raise VerificationError(f"the new {ks.name} key on the card does not match its new certificate",
                                        op_id=op.op_id)
            if codes is not None:
                link.cns.verify_pin(codes.pin, ks.name)
                challenge = b"cns-agent renewal test signature " + op.op_id.encode() + ks.name.encode()
                block = pkcs1_v15_sha256_block(challenge, (cert.public_key().key_size + 7) // 8)
                sig = link.issuer.raw_sign(ks, ks.spare_key_ref, block)
                try:
                    cert.public_key().verify(sig, challenge, padding.PKCS1v15(), hashes.SHA256())
                except Exception as exc:
                    raise VerificationError(f"the new {ks.name} key's test signature does not verify",
                                            op_id=op.op_id) from exc
        return codes is not None

    def _sides(self, link, model, op: Operation) -> set[str]:
        """Per keyset: ``old`` (its live certificate is the current one), ``new`` (the renewed one), ``other``
        (another certificate, its key live: the card was renewed since by another operation) or ``broken``
        (the live key does not match the live certificate)."""
        states = set()
        for ks in model.keysets:
            new_der, old_der = _unb64(op.data[f"cert_{ks.name}"]), _unb64(op.data[f"current_{ks.name}"])
            live_der = link.issuer.read_ef(ks.cert_path)
            side = "new" if live_der == new_der else "old" if live_der == old_der else "other"
            try:
                cert = x509.load_der_x509_certificate(live_der or b"")
            except ValueError:
                cert = None
            if cert is None or not _same_key(link.issuer.read_public_key(ks.key_ref), cert.public_key()):
                side = "broken"
            states.add(side)
        return states

    def _renewed_since(self, link, model, op: Operation) -> bool:
        """Past this renewal's switch, every live keyset holds a certificate of neither side with its key: another
        operation (a station, or another journal) renewed the card since, and cleaned up after itself. Nothing
        of this renewal is on the card any more; it is not touched again."""
        return op.step_done("switch") and self._sides(link, model, op) == {"other"}

    def _where(self, link, model, op: Operation) -> str:
        """``old`` when every keyset's live certificate is its current one, ``new`` when every one is the
        renewed one — and in either case the live key matches it. Certificate and key move together
        (one SWITCH), and certificates always differ, so the certificate says which side the card is on."""
        states = self._sides(link, model, op)
        if len(states) != 1 or not states <= {"old", "new"}:
            raise VerificationError(f"the card's live keysets are neither all old nor all new ({sorted(states)})",
                                    op_id=op.op_id)
        return states.pop()

    def _switch(self, link, model, op: Operation) -> None:
        if self._where(link, model, op) == "old":
            mask = sum(1 << i for i in range(len(model.keysets)))
            link.issuer.authenticate(self.card_admin)
            link.issuer.switch_keysets(mask)
        if self._where(link, model, op) != "new":
            raise VerificationError("SWITCH KEYSET answered OK but the live keysets are not the new ones",
                                    op_id=op.op_id)

    def _cleanup(self, link, model, op: Operation) -> dict[str, Any]:
        if self._renewed_since(link, model, op):
            log.warning("card %s: renewed again since renewal %s switched; its spare slots and marker are not ours "
                        "to clean", op.card_serial, op.op_id)
            return {"renewed_since": True}
        if self._where(link, model, op) != "new":   # never erase what is live
            raise VerificationError("refusing to erase the spare slots: the new keys are not live", op_id=op.op_id)
        self._clean_spares(link, model, False)
        return {}

    def _clean_spares(self, link, model, clear_marker: bool) -> None:
        link.issuer.authenticate(self.card_admin)
        for ks in model.keysets:
            link.issuer.erase_key(ks.spare_key_ref)
            link.issuer.delete_ef(ks.spare_cert_path)
        if clear_marker and model.paths.renewal_marker:
            size = len(link.cns.read_file(model.paths.renewal_marker))
            link.cns.update_binary(model.paths.renewal_marker, bytes(size))

    # -- personalizer side ----------------------------------------------------------------
    async def _renew(self, op: Operation, ks, *, resumed: bool) -> tuple[bytes, list[bytes]]:
        request_id = op.data["request_ids"][ks.name]
        step = f"renew:{ks.name}"
        resp = None
        try:
            if resumed:
                # begun before (answer lost, agent killed, queued): look it up, never re-issue
                resp = await self._timed("broker", find_or_none, self.uplink, request_id)
            if resp is None:
                resp = await self._timed("broker", self.uplink.renew, request_id=request_id,
                                         profile=PROFILE_OF_KEYSET[ks.name],
                                         csr_der=_unb64(op.data[f"csr_{ks.name}"]),
                                         current_certificate_der=_unb64(op.data[f"current_{ks.name}"]),
                                         proof_of_possession=_unb64(op.data[f"pop_{ks.name}"]),
                                         requester=self.requester)
            if resp.state not in (STATE_ISSUED, STATE_FAILED):
                self.progress(step, f"request {request_id} queued at the personalizer (CA not available); "
                                    "waiting for it")
                resp = await self._timed("broker", follow, self.uplink, request_id, timeout_s=self.watch_timeout_s,
                                         progress=lambda m: self.progress(step, m))
        except UplinkUnavailable:
            raise
        except UplinkError as exc:
            if refused(exc):
                raise _Refused(f"the personalizer refused the {ks.name} renewal: {exc}") from exc
            raise UplinkUnavailable(str(exc), code=exc.code) from exc
        self.on_step(step, "answered")       # the answer is here, not yet journaled (tests' fault hooks)
        if resp.state == STATE_FAILED:
            raise _Refused(f"the CA refused the {ks.name} renewal: {resp.error.code} {resp.error.message}")
        if resp.state == STATE_CANCELLED:
            raise _Refused(f"central IT cancelled the {ks.name} renewal request {request_id} at the personalizer")
        if resp.state != STATE_ISSUED:
            raise _Refused(f"the {ks.name} renewal request {request_id} ended without a certificate (state "
                           f"{resp.state})")
        self._check_issued(op, ks, resp.certificate_der)
        return resp.certificate_der, list(resp.chain_der)

    @staticmethod
    def _check_issued(op: Operation, ks, der: bytes) -> None:
        """A certificate is written to the card only when it is one, for the new key in the spare slot."""
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            raise _Refused(f"the personalizer answered the {ks.name} renewal without a readable certificate "
                           f"({len(der)} bytes); nothing was written") from None
        new = serialization.load_der_public_key(_unb64(op.data[f"pubkey_{ks.name}"]))
        if not _same_key(cert.public_key(), new):
            raise _Refused(f"the certificate issued for {ks.name} is not for the new key; nothing was written")

    async def _revoke_orphans(self, op: Operation) -> dict[str, Any]:
        """The undo's tail: every request id of the operation (one may have been issued without the agent
        hearing the answer) revoked, cessationOfOperation. Until the personalizer confirms, it is held."""
        orphans = [Orphan(request_id=rid) for rid in op.data.get("request_ids", {}).values()]
        try:
            results = await self._timed("broker", revoke_orphans, self.uplink, orphans, requester=self.requester)
        except UplinkUnavailable as exc:
            raise UplinkUnavailable(f"the personalizer is unreachable ({exc})") from exc
        pending = [r.source for r in results if r.outcome == "pending"]
        if pending:
            await self.journal.step_done(op, "revoke-orphans-attempt", orphans=[r.as_dict() for r in results])
            raise UplinkUnavailable(f"request(s) {', '.join(pending)} still queued at the personalizer (a "
                                    "certificate issued for them is revoked as soon as it exists)")
        return {"orphans": [r.as_dict() for r in results]}


class _Actions:
    """One run's step actions (``build_plan``'s runner): the card link, the model and the codes of the call."""

    PROGRESS = {"mark": "recording the renewal on the card",
                "generate-key": "generating the new {} key pair in the spare slot",
                "csr": "signing the {} request with the new key and the proof with the current one",
                "renew": "requesting the new {} certificate",
                "write-cert": "writing the new {} certificate to the spare file",
                "verify": "verifying the new keys and certificates",
                "switch": "switching to the new keys and certificates (one atomic step)",
                "cleanup": "removing the old keys and certificates",
                "unmark": "clearing the renewal record on the card",
                "revoke-superseded": "revoking the replaced certificates (superseded)"}

    def __init__(self, r: "Renewer", link, model, codes: Codes | None):
        self.r, self.link, self.model, self.codes = r, link, model, codes

    async def forward(self, step: str, op: Operation, resumed: bool) -> dict[str, Any]:
        r, link, model, codes = self.r, self.link, self.model, self.codes
        name, _, ks_name = step.partition(":")
        if name == "revoke-orphans":
            return await r._revoke_orphans(op)
        ks = model.keyset(ks_name) if ks_name else None
        r.progress(step, self.PROGRESS[name].format(PROFILE_OF_KEYSET.get(ks_name, "") if name == "renew"
                                                    else ks_name))
        if name == "mark":
            await r._card(link, r._admin_then, link, model, link.cns.update_binary,
                       model.paths.renewal_marker, marker_bytes(op.op_id, op.data["marker_size"]))
            return {}
        if name == "generate-key":
            key = await r._card(link, r._admin_then, link, model, link.issuer.generate_key,
                             ks.spare_key_ref, op.data[f"bits_{ks.name}"])
            return {f"pubkey_{ks.name}": _b64(_spki(key))}
        if name == "csr":
            if codes is None:
                raise _Refused("the holder's PIN is needed to sign the renewal request; nothing was sent")
            csr, pop = await r._card(link, r._make_csr, link, model, ks, op, codes)
            return {f"csr_{ks.name}": _b64(csr), f"pop_{ks.name}": _b64(pop)}
        if name == "renew":
            cert, _chain = await r._renew(op, ks, resumed=resumed)
            return {f"cert_{ks.name}": _b64(cert)}   # the chain is the CA's, the same for every card: not journaled
        if name == "write-cert":
            await r._card(link, r._admin_then, link, model, link.issuer.write_ef, ks.spare_cert_path,
                       _unb64(op.data[f"cert_{ks.name}"]))
            return {}
        if name == "verify":
            return {"test_signatures": await r._card(link, r._verify, link, model, op, codes)}
        if name == "switch":
            await r._card(link, r._switch, link, model, op)
            return {}
        if name == "cleanup":
            return await r._card(link, r._cleanup, link, model, op)
        if name == "unmark" and op.data.get("renewed_since"):
            return {}   # the marker is the later operation's, if any
        if name == "unmark":
            await r._card(link, r._admin_then, link, model, link.cns.update_binary,
                       model.paths.renewal_marker, bytes(op.data["marker_size"]))
            return {}
        if name == "revoke-superseded":
            olds = [x509.load_der_x509_certificate(_unb64(op.data[f"current_{k.name}"])) for k in model.keysets]
            results = await r._timed("broker", revoke_orphans, r.uplink,
                                     [Orphan(issuer_dn=c.issuer.rfc4514_string(), serial_hex=f"{c.serial_number:X}")
                                      for c in olds], requester=r.requester, reason=SUPERSEDED)
            return {"superseded": [x.as_dict() for x in results]}
        raise AssertionError(step)

    async def undo(self, step: str, op: Operation) -> None:
        """Back to the old keyset: spare slots emptied, marker cleared (each idempotent)."""
        link, model, card = self.link, self.model, self.r._card
        name, _, ks_name = step.partition(":")
        ks = model.keyset(ks_name) if ks_name else None
        if name == "generate-key":
            await card(link, self.r._admin_then, link, model, link.issuer.erase_key, ks.spare_key_ref)
        elif name == "write-cert":
            await card(link, self.r._admin_then, link, model, link.issuer.delete_ef, ks.spare_cert_path)
        elif name == "mark":
            await card(link, self._clear_marker)

    def _clear_marker(self) -> None:
        size = len(self.link.cns.read_file(self.model.paths.renewal_marker))
        self.r._admin_then(self.link, self.model, self.link.cns.update_binary, self.model.paths.renewal_marker,
                           bytes(size))


def _subject_of(cert: x509.Certificate) -> list[tuple[str, str]]:
    """The CSR subject for a renewal: the holder as the current certificate names them."""
    oid = x509.NameOID
    names = {"country_name": oid.COUNTRY_NAME, "serial_number": oid.SERIAL_NUMBER, "given_name": oid.GIVEN_NAME,
             "surname": oid.SURNAME, "common_name": oid.COMMON_NAME}
    out = []
    for key, o in names.items():
        attrs = cert.subject.get_attributes_for_oid(o)
        if attrs:
            out.append((key, str(attrs[0].value)))
    return out


__all__ = ["Renewer", "RenewalPolicy", "Outcome", "check_window", "plan", "marker_bytes", "parse_marker", "KIND"]
