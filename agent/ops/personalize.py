"""Personalization of a blank CNS card ("decentrata immediata") as a plan of the step engine.

The plan (``build_plan``), run by ``agent.ops.engine`` (each step journaled before it
runs; forward or undo decided by ``decide`` from the journal; the two submits run
concurrently, begun in one commit):

    change-key                (a card that arrived with its batch's transport key, issue 12:
                              replaced by its own key, wrapped centrally; a resume re-reads the key)
    set-codes                 (models with pin_mode = set_at_personalization)
    generate-key:CNS0/CNS1    key pairs generated on the card (public key kept)
    csr:CNS0/CNS1             PKCS#10 signed by the card after PIN verification
    submit:CNS0/CNS1          SubmitIssue with a request id derived from the operation
    write-dati-personali      EF_DatiPersonali (the exact bytes whose hash is in the CN)
    write-cert:CNS0/CNS1      certificate files, read back
    verify                    each slot's public key equals its certificate's; with the
                              PIN at hand, a test signature per key checked against it

Resume rules (``resume``), for a crash, a pulled card or an unreachable personalizer:
every step is safe to repeat (key generation before any CSR left the station; the
same request id and CSR return the certificate already issued; files are rewritten).
Only ``csr:*`` needs the holder's PIN. Without it, an operation that has all CSRs
rolls *forward* (submit, write, verify by public-key match); one that has not yet
produced them rolls *back* (``undo``): keys erased, certificate files deleted,
EF_DatiPersonali cleared (each step's undo, last first) — a blank card again, and
nothing was sent to the CA.
A request the CA refused rolls back too. UNAVAILABLE leaves the operation open for
the next attempt; the card holds no certificate and nobody holds it.

Binding (``start``): an open personalization of the card is resumed only for the
same holder data; another holder is refused with what is open and how to finish
or discard it. The PIN (preset models) is verified before the operation is
journaled, so a wrong PIN costs one try and changes nothing on the card.

Refusals: a request the CA refused or central IT cancelled (``cnsctl queue
cancel``) undoes the operation: ``undo`` wipes the card, then ``revoke-orphans``
revokes what the CA issued for it (``agent.ops.revoke_orphans``,
cessationOfOperation), both journaled, so a crash mid-undo is finished by the
next resume. An undo whose revocation could not be settled (personalizer
unreachable, a request still queued) stays open and is retried.

Stopping (``stop`` event, set by the operator's Ctrl-C): checked between step
groups and while following a queued request. Before any request was sent the
card is undone (blank again); after, the operation stays open (card released)
and is finished on the next insert, or by ``operations finish|discard``.

A closed CA (service window, maintenance, unreachable, from GetCAStatus) is not
waited for with the card held: the operation returns ``open`` with a message
saying when the CA reopens; the agent retries it by itself (``agent.commands.run``).

A request the personalizer queued while the CA is up is
followed with WatchRequest, GetRequest polling when the stream breaks
(``agent.ops.follow``); after ``watch_timeout_s`` the operation stays open. Once a
submit has been sent (``_submitted`` in the journal, recorded before the call) a
resume asks for that request id first and only re-submits when the personalizer
never saw it — so a restart while a request is queued re-watches the same request,
and the requester recorded at start is reused so the payload never changes.

Deferred issuance (issue 19, "decentrata differita"): ``registration_holder`` reads a
registration the chamber's IR made (through the uplink, before the card is touched) and
gives its holder; ``start(registration=…)`` refuses, before anything is journaled, a
registration that is expired or used for another card, journals its id with the holder
(a resume with another registration, or none, is refused like another holder) and every
submit names it, so the personalizer checks the holder and binds the registration to the card.

PINs and PUKs live in ``Codes`` for the call only. Imports ``agent.card``,
``agent.ops`` and ``agent.uplink``; card I/O runs in a worker thread.
"""
from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from agent.card import datipersonali
from agent.card.issuer import KVN_TRANSPORT
from agent.card.transport import ApduTransport
from agent.ops.cardlink import b64 as _b64, held, open_link, spki as _spki, unb64 as _unb64
from agent.ops.engine import UNDO_STEP, Engine, Plan, Result, Step, actions
from agent.ops.csr import build_csr, pkcs1_v15_sha256_block
from agent.ops.follow import find_or_none, follow
from agent.ops.errors import OperationError, PreconditionError, UplinkError, UplinkUnavailable, VerificationError
from agent.ops.holder import Codes, HolderFileError, HolderRecord, describe_holder
from agent.ops.journal import DONE, UNDONE, Journal, Operation
from agent.ops.p11check import IN_PROCESS
from agent.ops.revoke_orphans import Orphan, revoke_orphans
from agent.ops.uplink import refused
from cns_spec import requests
from cns_spec.profiles import PROFILE_OF_KEYSET

log = logging.getLogger("cns.agent.personalize")

REGISTRATION_ID_RE = re.compile(r"REG-[0-9A-F]{16}")   # as the personalizer makes them
KIND = "personalize"
STATE_ISSUED, STATE_FAILED, STATE_CANCELLED = requests.CODE_ISSUED, requests.CODE_FAILED, requests.CODE_CANCELLED


WITHOUT_PIN = "resumed without the holder's PIN before the requests were signed"


def build_plan(model, runner=None, *, transport_key: bool = False) -> Plan:
    """The personalization of ``model`` as a plan (``runner``: the run's actions; None: for ``decide``).

    ``transport_key``: the card arrived with its batch's transport key (journaled at start as
    ``transport_key``): the first step ``change-key`` puts the card's own key in its place. It has
    no undo (a blank card with its own key is a blank card); a resume re-reads the key version,
    so a change already made is not made twice."""
    fwd, rev = actions(runner)
    names = [ks.name for ks in model.keysets]
    steps = [Step("change-key", fwd("change-key"))] if transport_key else []
    steps += [Step("set-codes", fwd("set-codes"), needs_codes=True)] \
        if model.pin_mode == "set_at_personalization" else []
    steps += [Step(f"generate-key:{n}", fwd(f"generate-key:{n}"), rev(f"generate-key:{n}")) for n in names]
    steps += [Step(f"csr:{n}", fwd(f"csr:{n}"), needs_codes=True) for n in names]
    steps += [Step(f"submit:{n}", fwd(f"submit:{n}"), submits=n, group="submit",
                   detail=lambda op, n=n: {"request_id": op.data["request_ids"][n]}) for n in names]
    steps += [Step("write-dati-personali", fwd("write-dati-personali"), rev("write-dati-personali"))]
    steps += [Step(f"write-cert:{n}", fwd(f"write-cert:{n}"), rev(f"write-cert:{n}")) for n in names]
    steps += [Step("verify", fwd("verify"))]
    revoke = Step("revoke-orphans", fwd("revoke-orphans"), applies=lambda op: bool(_sent(op)),
                  detail=lambda op: {"requests": _sent(op)})
    return Plan(KIND, tuple(steps), after_undo=(revoke,), noun="personalization", batch=True, without_codes=WITHOUT_PIN,
                undo_on=(_Refused,), hold_on=(UplinkUnavailable, CAClosed), stop_on=(_Stopped,))


def _transport_key(op: Operation) -> bool:
    return bool(op.data.get("transport_key"))


def _sent(op: Operation) -> list[str]:
    """Every request that may have been sent: one issued but not journaled (answer lost) is found by id."""
    return [op.data["request_ids"][n] for n, was in op.data.get("_submitted", {}).items() if was]


@dataclass
class Outcome:
    op_id: str
    card_serial: str
    state: str                         # done | undone | open
    holder_label: str = ""
    certificates: dict[str, bytes] = field(default_factory=dict)
    test_signatures: bool = False      # False when verified by public-key match only (no PIN at hand)
    message: str = ""
    stage_seconds: dict[str, float] = field(default_factory=dict)
    pkcs11: str = "not available: the operation did not finish"   # agent.ops.p11check's answer

    def as_dict(self) -> dict[str, Any]:
        subjects = {ks: x509.load_der_x509_certificate(der).subject.rfc4514_string()
                    for ks, der in self.certificates.items()}
        return {"op_id": self.op_id, "card_serial": self.card_serial, "state": self.state,
                "holder_label": self.holder_label, "certificate_subjects": subjects,
                "test_signatures": self.test_signatures, "message": self.message,
                "stage_seconds": {k: round(v, 6) for k, v in self.stage_seconds.items()}, "pkcs11": self.pkcs11}


class Personalizer:
    """Runs and resumes personalizations for one station.

    ``connect()`` opens the card in the operation's reader and returns an
    ``ApduTransport``; ``uplink`` is an open ``PersonalizerClient``;
    ``card_admin`` answers the card's issuer challenges (``agent.card.issuer.CardAuthenticator``; central).
    """

    def __init__(self, *, journal: Journal, uplink, requester: dict[str, str],
                 card_admin, progress: Callable[[str, str], None] | None = None,
                 watch_timeout_s: float = 600.0, pkcs11=None, stop: asyncio.Event | None = None,
                 on_step: Callable[[str, str], None] | None = None):
        self.journal = journal
        self.on_step = on_step or (lambda step, phase: None)   # the engine's step callback (agent.ops.engine)
        self.stop = stop or asyncio.Event()   # set: stop at the next safe point (operator's Ctrl-C)
        self.uplink = uplink
        self.requester = requester
        self.card_admin = card_admin
        self.progress = progress or (lambda step, msg: None)
        self.watch_timeout_s = watch_timeout_s
        self.pkcs11 = pkcs11 or IN_PROCESS   # agent.ops.p11check: the card as PKCS#11 applications see it
        self.stage: dict[str, float] = {}
        self._active: dict[str, int] = {}
        self._since: dict[str, float] = {}

    # -- timing per stage (card, ca, broker) for the benchmark -------------------------
    async def _timed(self, stage: str, fn, *args, **kwargs):
        """Run ``fn`` (a coroutine function, or a card call in a worker thread) and add the wall time during
        which at least one call of ``stage`` was running (concurrent calls are not counted twice)."""
        loop = asyncio.get_running_loop()
        active = self._active.get(stage, 0)
        if active == 0:
            self._since[stage] = loop.time()
        self._active[stage] = active + 1
        try:
            if asyncio.iscoroutinefunction(fn):
                return await fn(*args, **kwargs)
            return await asyncio.to_thread(fn, *args, **kwargs)
        finally:
            self._active[stage] -= 1
            if self._active[stage] == 0:
                self.stage[stage] = self.stage.get(stage, 0.0) + loop.time() - self._since[stage]

    async def _card(self, link, fn, *args):
        """Card work (one step, or a check before the operation): ``fn`` in the card worker thread inside
        ``link.transaction()`` (agent.ops.cardlink.held): no other client's command lands in between, and the
        card is released as soon as ``fn`` returns (never held across a wait for the personalizer)."""
        return await self._timed("card", held(link, fn), *args)

    # -- entry points -------------------------------------------------------------------
    async def start(self, *, connect: Callable[[], ApduTransport], reader: str, model, holder: HolderRecord,
                    codes: Codes, registration=None) -> Outcome:
        """``registration``: a deferred issuance (``registration_holder``'s registration; ``holder`` is its)."""
        self.stage = {}
        link = await self._timed("card", open_link, connect, model)
        serial = await self._card(link, link.cns.read_serial)
        registration_id = registration.registration_id if registration is not None else ""
        if registration is not None:
            check_registration_for_card(registration, serial)
        open_ops = await self.journal.open_operations(serial)
        if open_ops:
            other = open_ops[0]
            if other.kind == KIND and other.data.get("registration_id", "") != registration_id:
                was = other.data.get("registration_id", "")
                raise PreconditionError(
                    f"card {serial} has an open personalization {other.op_id} "
                    + (f"for registration {was}" if was else "without a registration")
                    + f"; finish it with `cns-agent operations finish {other.op_id}` or discard it with "
                    f"`cns-agent operations discard {other.op_id}`", op_id=other.op_id)
            if other.kind != KIND:
                raise PreconditionError(f"card {serial} has an unfinished {other.kind} operation {other.op_id}; "
                                        f"finish or discard it first (`cns-agent operations finish|discard "
                                        f"{other.op_id}`)", op_id=other.op_id)
            if other.data.get("holder") != holder.as_dict():
                raise PreconditionError(
                    f"card {serial} has an open personalization {other.op_id} for another holder "
                    f"({describe_holder(other.data.get('holder', {}))}); finish it with `cns-agent operations finish "
                    f"{other.op_id}` or discard it (blank card, its certificates revoked) with `cns-agent operations "
                    f"discard {other.op_id}`", op_id=other.op_id)
            return await self.resume(other, connect=connect, model=model, codes=codes, link=link)
        await self._card(link, self._check_blank, link, model)
        if model.pin_mode == "set_at_personalization" and codes.puk is None:
            raise PreconditionError(f"model {model.id} sets PIN and PUK at personalization: give both")
        if model.pin_mode != "set_at_personalization":
            # before anything is journaled or generated: a wrong PIN costs one try and changes nothing
            await self._card(link, self._check_pin, link, model, codes)
        dp = datipersonali.serialize(holder.personal_data())
        transport = await self._card(link, link.issuer.key_version) == KVN_TRANSPORT
        # the card must be one the personalizer can administer (its stock) before anything is journaled (issue 12)
        await self._check_administrable(link, serial)
        op = await self.journal.begin_operation(
            kind=KIND, card_serial=serial, model_id=model.id, reader=reader,
            data={"holder": holder.as_dict(), "dati_personali": _b64(dp), "requester": dict(self.requester),
                  **({"transport_key": True} if transport else {}),
                  **({"registration_id": registration_id} if registration_id else {})})
        op.data["request_ids"] = {ks.name: f"pers-{op.op_id}-{ks.name}" for ks in model.keysets}
        self.progress("start", f"card {serial}: personalization {op.op_id} for {holder.given_name} {holder.surname}")
        return await self._drive(op, link, model, codes)

    async def resume(self, op: Operation, *, connect: Callable[[], ApduTransport], model, codes: Codes | None = None,
                     link=None) -> Outcome:
        """Finish or undo an open operation (agent start, card reinsert, operator retry)."""
        if link is None:
            self.stage = {}
            link = await self._timed("card", open_link, connect, model)
            serial = await self._card(link, link.cns.read_serial)
            if serial != op.card_serial:
                raise PreconditionError(f"operation {op.op_id} is for card {op.card_serial}, not {serial}")
        if op.data.get("requester"):
            self.requester = dict(op.data["requester"])   # the same payload on every retry of a request id
        self.progress("resume", f"card {op.card_serial}: resuming {op.kind} {op.op_id} after step {op.step}")
        return await self._drive(op, link, model, codes)

    # -- the plan, run by the engine ----------------------------------------------------
    def _engine(self, op: Operation) -> Engine:
        def on_step(step: str, phase: str) -> None:
            if (step, phase) == ("undo", "begun"):
                self.progress("undo", f"card {op.card_serial}: undoing personalization {op.op_id}: "
                                      f"{op.data.get('undo_reason', '')}")
            self.on_step(step, phase)
        return Engine(self.journal, on_step=on_step)

    async def _drive(self, op: Operation, link, model, codes: Codes | None) -> Outcome:
        plan = build_plan(model, _Actions(self, link, model, codes), transport_key=_transport_key(op))
        res = await self._engine(op).run(plan, op, codes_at_hand=codes is not None, stop=self.stop)
        return await self._outcome(op, plan, res, model, codes)

    async def undo(self, op: Operation, link, model, reason: str) -> Outcome:
        """Back to a blank card, then the certificates issued for the operation revoked (``discard``)."""
        plan = build_plan(model, _Actions(self, link, model, None), transport_key=_transport_key(op))
        return await self._outcome(op, plan, await self._engine(op).undo(plan, op, reason), model, None)

    async def _outcome(self, op: Operation, plan, res: Result, model, codes: Codes | None) -> Outcome:
        if res.state == "stopped":
            return await self._stopped(op, plan, model)
        if res.state == "open":
            if res.step == "revoke-orphans":
                self.progress("revoke-orphans", str(res.error))
            elif res.step == UNDO_STEP:   # the card's issuer key is central (issue 12): no personalizer, no undo yet
                msg = (f"undoing personalization {op.op_id} ({res.reason}) needs the personalizer to administer "
                       f"card {op.card_serial}, and it is unreachable ({res.error}); kept in the journal, the agent "
                       "retries")
                self.progress("undo", msg)
                return Outcome(op.op_id, op.card_serial, "open", message=msg, stage_seconds=dict(self.stage))
            else:
                why = "" if isinstance(res.error, CAClosed) else "personalizer unreachable; "
                self.progress(res.step or "", f"{why}operation {op.op_id} kept open: {res.error}")
            return Outcome(op.op_id, op.card_serial, "open", message=str(res.error), stage_seconds=dict(self.stage))
        if res.state == UNDONE:
            reason = res.reason
            if op.data.get("revoked_serials"):
                reason += (f"; certificate(s) {', '.join(op.data['revoked_serials'])} issued for it revoked "
                           "(cessationOfOperation)")
            self.progress("undone", f"card {op.card_serial} is blank again: {reason}")
            return Outcome(op.op_id, op.card_serial, UNDONE, message=reason, stage_seconds=dict(self.stage))
        certs = {n: _unb64(op.data[f"cert_{n}"]) for n in (ks.name for ks in model.keysets)}
        holder = HolderRecord.from_dict(op.data["holder"])
        self.progress("done", f"card {op.card_serial} personalized")
        pkcs11 = await self._timed("pkcs11", self.pkcs11.check, reader=op.reader, certificates=certs,
                                   pin=codes.pin if codes is not None else None)
        self.progress("pkcs11", f"PKCS#11 (OpenSC): {pkcs11}")
        return Outcome(op.op_id, op.card_serial, DONE, f"{holder.given_name.upper()} {holder.surname.upper()}", certs,
                       bool(op.data.get("test_signatures")), stage_seconds=dict(self.stage), pkcs11=pkcs11)

    async def _stopped(self, op: Operation, plan, model) -> Outcome:
        """The operator asked to stop: before any request left the station the card is made blank again;
        after, the operation is kept open (the card is released) to be finished or discarded."""
        if not Engine.submitted(op):
            res = await self._engine(op).undo(plan, op, "stopped by the operator before any certificate was "
                                                        "requested")
            return await self._outcome(op, plan, res, model, None)
        msg = (f"stopped by the operator; the certificate requests are at the personalizer, so personalization "
               f"{op.op_id} is kept open: the agent finishes it by itself while the card is in a reader, or run "
               f"`cns-agent operations finish {op.op_id}` (or `discard {op.op_id}`: blank card, certificates "
               "revoked)")
        self.progress("stopped", msg)
        return Outcome(op.op_id, op.card_serial, "open", message=msg, stage_seconds=dict(self.stage))

    # -- card side (worker thread) ------------------------------------------------------
    def _admin_then(self, link, model, fn, *args):
        link.issuer.authenticate(self.card_admin)
        return fn(*args)

    async def _check_administrable(self, link, serial: str) -> None:
        """One issuer authentication (it changes nothing on the card) proves the personalizer administers this
        blank card: its batch is loaded, for this chamber (with the transport key when the card still holds
        it). A refusal stops here, nothing journaled: such an operation could neither go forward nor be
        undone, and it would block the card. Unreachable: journaled as usual, it waits for the personalizer."""
        try:
            await self._card(link, link.issuer.authenticate, self.card_admin)
        except UplinkUnavailable:
            return
        except UplinkError as exc:
            if not refused(exc):
                return
            raise PreconditionError(f"card {serial} cannot be personalized here: "
                                    f"{getattr(exc, 'detail', '') or exc}; nothing was journaled and the card was "
                                    "not changed") from None

    def _check_blank(self, link, model) -> None:
        for ks in model.keysets:
            if link.issuer.read_ef(ks.cert_path) is not None:
                raise PreconditionError(f"the card already carries a {ks.name} certificate: it is not blank "
                                        "(renew it, or use a blank card)")

    def _check_pin(self, link, model, codes: Codes) -> None:
        """The holder's PIN on every keyset, in order: the first refusal stops (one try used)."""
        for ks in model.keysets:
            link.cns.verify_pin(codes.pin, ks.name)

    def _set_codes(self, link, model, codes: Codes) -> None:
        link.issuer.authenticate(self.card_admin)
        for ks in model.keysets:
            link.issuer.set_code(ks.pin_ref, codes.pin, "PIN")
            link.issuer.set_code(ks.puk_ref, codes.puk, "PUK")

    def _make_csr(self, link, model, ks, op: Operation, codes: Codes) -> bytes:
        pub = serialization.load_der_public_key(_unb64(op.data[f"pubkey_{ks.name}"]))
        slot = link.issuer.read_public_key(ks.key_ref)
        if slot is None or slot.public_numbers() != pub.public_numbers():
            raise VerificationError(f"key slot {ks.key_ref:02X} no longer holds the generated {ks.name} key",
                                    op_id=op.op_id)
        link.cns.verify_pin(codes.pin, ks.name)
        h = HolderRecord.from_dict(op.data["holder"])
        subject = [("country_name", "IT"), ("serial_number", f"TINIT-{h.codice_fiscale}"),
                   ("given_name", h.given_name.upper()), ("surname", h.surname.upper()),
                   ("common_name", f"{h.surname.upper()} {h.given_name.upper()}")]
        return build_csr(pub, subject, lambda block: link.issuer.raw_sign(ks, ks.key_ref, block))

    def _verify(self, link, model, op: Operation, codes: Codes | None) -> bool:
        for ks in model.keysets:
            der = _unb64(op.data[f"cert_{ks.name}"])
            if link.issuer.read_ef(ks.cert_path) != der:
                raise VerificationError(f"{ks.name} certificate does not read back as written", op_id=op.op_id)
            cert = x509.load_der_x509_certificate(der)
            slot = link.issuer.read_public_key(ks.key_ref)
            if slot is None or slot.public_numbers() != cert.public_key().public_numbers():
                raise VerificationError(f"{ks.name} key on the card does not match its certificate", op_id=op.op_id)
            if codes is not None:
                link.cns.verify_pin(codes.pin, ks.name)
                challenge = b"cns-agent test signature " + op.op_id.encode() + ks.name.encode()
                block = pkcs1_v15_sha256_block(challenge, (cert.public_key().key_size + 7) // 8)
                sig = link.issuer.raw_sign(ks, ks.key_ref, block)
                try:
                    cert.public_key().verify(sig, challenge, padding.PKCS1v15(), hashes.SHA256())
                except Exception as exc:
                    raise VerificationError(f"{ks.name} test signature does not verify", op_id=op.op_id) from exc
        if link.cns.read_file(model.paths.dati_personali)[:len(_unb64(op.data["dati_personali"]))] != \
                _unb64(op.data["dati_personali"]):
            raise VerificationError("EF_DatiPersonali does not read back as written", op_id=op.op_id)
        return codes is not None

    # -- personalizer side ----------------------------------------------------------------
    async def _submit(self, op: Operation, model, ks, first_attempt: bool) -> tuple[bytes, list[bytes]]:
        """The CA's certificate for ``ks``. The step's begun record (``_submitted``) is durable before
        this runs; ``first_attempt`` is False when an earlier run may already have sent the request."""
        holder = HolderRecord.from_dict(op.data["holder"])
        request_id = op.data["request_ids"][ks.name]
        try:
            resp = None
            if not first_attempt:
                # sent before (agent killed, answer lost, request queued): follow that request, never a new one
                resp = await self._timed("broker", find_or_none, self.uplink, request_id)
            if resp is None:
                resp = await self._timed("broker", self.uplink.submit_issue, request_id=request_id,
                                         profile=PROFILE_OF_KEYSET[ks.name],
                                         csr_der=_unb64(op.data[f"csr_{ks.name}"]),
                                         holder=holder.as_proto_fields(), card_id=op.card_serial, model=model.id,
                                         requester=self.requester,
                                         ef_dati_personali=_unb64(op.data["dati_personali"]),
                                         **({"registration_id": op.data["registration_id"]}
                                            if op.data.get("registration_id") else {}))
            if resp.state not in (STATE_ISSUED, STATE_FAILED, STATE_CANCELLED):
                closed = await self._ca_closed(resp)
                if closed:   # not waited for with the card held: the agent retries by itself
                    self.progress(f"submit:{ks.name}", closed)
                    raise CAClosed(closed)
                self.progress(f"submit:{ks.name}", f"request {request_id} queued at the personalizer; following it")
                resp = await self._follow(request_id)
        except (UplinkUnavailable, CAClosed, _Stopped):
            raise
        except UplinkError as exc:
            if refused(exc):
                raise _Refused(f"the personalizer refused the {ks.name} request: {exc}") from exc
            raise UplinkUnavailable(str(exc), code=exc.code) from exc
        if resp.state == STATE_FAILED:
            raise _Refused(f"the CA refused the {ks.name} request: {resp.error.code} {resp.error.message}")
        if resp.state == STATE_CANCELLED:
            raise _Refused(f"central IT cancelled the {ks.name} request {request_id} at the personalizer")
        if resp.state != STATE_ISSUED or not resp.certificate_der:
            raise UplinkUnavailable(f"request {request_id} answered without a certificate (state {resp.state}); "
                                    "the operation is kept and follows the same request when resumed")
        return resp.certificate_der, list(resp.chain_der)

    async def _ca_closed(self, resp) -> str:
        """A message saying the CA is closed and when it reopens, or "" when it is open (the request is just
        queued behind others): from the request's waiting reason and GetCAStatus."""
        ca_status = getattr(self.uplink, "ca_status", None)   # an in-memory uplink may not offer it
        try:
            st = await self._timed("broker", ca_status) if ca_status is not None else None
        except UplinkError:
            st = None
        reason = resp.waiting_reason
        if st is not None and st.operational and st.service_window_open and not st.in_maintenance:
            return ""
        if st is None and not reason:
            return ""
        reopen = 0
        why = reason or "the CA is not available"
        if st is not None:
            if st.in_maintenance:
                why, reopen = st.detail or "CA maintenance", st.reactivation_at
            elif not st.service_window_open:
                why, reopen = "outside the CA service window", st.service_window_changes_at
            elif not st.operational:
                why, reopen = st.detail or why, st.reactivation_at
        when = (_dt.datetime.fromtimestamp(reopen).astimezone().strftime("%a %d %b %Y %H:%M %Z")
                if reopen else "when it answers again")
        return (f"the CA is closed ({why}); it reopens {('at ' + when) if reopen else when}. The request stays "
                "queued at the personalizer; the card is released (you may take it out) and the agent finishes "
                "the personalization by itself when the CA has answered and the card is in a reader")

    async def _follow(self, request_id: str):
        """Watch the queued request (GetRequest polling when the stream breaks); UplinkUnavailable after
        ``watch_timeout_s`` keeps the operation open for the next start or insert, same request id."""
        watch = asyncio.ensure_future(self._timed("broker", follow, self.uplink, request_id,
                                                  timeout_s=self.watch_timeout_s,
                                                  progress=lambda m: self.progress("submit", m)))
        stop = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({watch, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if not watch.done():
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
            raise _Stopped(f"stopped while request {request_id} was queued")
        return watch.result()

    async def _revoke_orphans(self, op: Operation) -> dict[str, Any]:
        """The undo's tail: every certificate issued for the operation revoked (cessationOfOperation)."""
        try:
            results = await self._timed("broker", revoke_orphans, self.uplink,
                                        [Orphan(request_id=r) for r in _sent(op)], requester=self.requester)
        except UplinkError as exc:
            raise UplinkUnavailable(f"card {op.card_serial} is blank again; revoking the certificates issued for "
                                    f"{op.op_id} is not finished ({exc}); the agent retries it") from exc
        unsettled = [r for r in results if not r.settled]
        if unsettled:
            raise UplinkUnavailable(
                f"card {op.card_serial} is blank again; "
                + "; ".join(f"request {r.source}: {r.error or 'still queued at the personalizer'}" for r in unsettled)
                + f". Operation {op.op_id} stays open until its certificates are revoked; the agent retries")
        return {"revoked_serials": [r.serial_hex for r in results if r.outcome in ("revoked", "already")]}


class _Actions:
    """One run's step actions (``build_plan``'s runner): the card link, the model and the codes of the call."""

    PROGRESS = {"change-key": "replacing the card's transport key with its own issuer key",
                "set-codes": "setting the holder's PIN and PUK",
                "generate-key": "generating the {} key pair on the card",
                "csr": "signing the {} certificate request on the card",
                "submit": "requesting the {} certificate",
                "write-dati-personali": "writing EF_DatiPersonali",
                "write-cert": "writing the {} certificate",
                "verify": "verifying keys and certificates"}

    def __init__(self, p: "Personalizer", link, model, codes: Codes | None):
        self.p, self.link, self.model, self.codes = p, link, model, codes

    async def forward(self, step: str, op: Operation, resumed: bool) -> dict[str, Any]:
        p, link, model, codes = self.p, self.link, self.model, self.codes
        name, _, ks_name = step.partition(":")
        if name == "revoke-orphans":
            return await p._revoke_orphans(op)
        ks = model.keyset(ks_name) if ks_name else None
        p.progress(step, self.PROGRESS[name].format(PROFILE_OF_KEYSET.get(ks_name, "") if name == "submit"
                                                    else ks_name))
        if name == "change-key":   # re-reads the key version first: a resumed change is not made twice
            await p._card(link, link.issuer.replace_transport_key, p.card_admin)
            return {}
        if name == "set-codes":
            await p._card(link, p._set_codes, link, model, codes)
            return {}
        if name == "generate-key":
            key = await p._card(link, p._admin_then, link, model, link.issuer.generate_key, ks.key_ref,
                             model.rsa_bits)
            return {f"pubkey_{ks.name}": _b64(_spki(key))}
        if name == "csr":
            return {f"csr_{ks.name}": _b64(await p._card(link, p._make_csr, link, model, ks, op, codes))}
        if name == "submit":
            cert, _chain = await p._submit(op, model, ks, not resumed)
            return {f"cert_{ks.name}": _b64(cert)}   # the chain is the CA's, the same for every card: not journaled
        if name == "write-dati-personali":
            await p._card(link, p._admin_then, link, model, link.cns.update_binary,
                       model.paths.dati_personali, _unb64(op.data["dati_personali"]))
            return {}
        if name == "write-cert":
            await p._card(link, p._admin_then, link, model, link.issuer.write_ef, ks.cert_path,
                       _unb64(op.data[f"cert_{ks.name}"]))
            return {}
        if name == "verify":
            return {"test_signatures": await p._card(link, p._verify, link, model, op, codes)}
        raise AssertionError(step)

    async def undo(self, step: str, op: Operation) -> None:
        """Back towards a blank card: each undo is idempotent (an empty slot, a missing file)."""
        link, model = self.link, self.model
        name, _, ks_name = step.partition(":")
        ks = model.keyset(ks_name) if ks_name else None
        if name == "generate-key":
            await self.p._card(link, self.p._admin_then, link, model, link.issuer.erase_key, ks.key_ref)
        elif name == "write-cert":
            await self.p._card(link, self.p._admin_then, link, model, link.issuer.delete_ef, ks.cert_path)
        elif name == "write-dati-personali":
            await self.p._card(link, self._clear_dati_personali)

    def _clear_dati_personali(self) -> None:
        size = len(self.link.cns.read_file(self.model.paths.dati_personali))
        self.p._admin_then(self.link, self.model, self.link.cns.update_binary, self.model.paths.dati_personali,
                           bytes(size))


class _Refused(Exception):
    pass


class _Stopped(Exception):
    """The operator asked to stop while a request was followed."""


class CAClosed(OperationError):
    """The CA is closed (service window, maintenance, down): the operation stays open and is retried."""


async def registration_holder(uplink, registration_id: str) -> tuple[Any, HolderRecord]:
    """The registration ``registration_id`` and its holder, from the personalizer (deferred issuance).

    Refused here, before any card is touched: an id of the wrong shape, an expired registration."""
    registration_id = (registration_id or "").strip().upper()
    if not REGISTRATION_ID_RE.fullmatch(registration_id):
        raise PreconditionError(f"{registration_id!r} is not a registration id (REG- and 16 hex digits, as on "
                                "the recognition officer's receipt)")
    reg = await uplink.get_registration(registration_id)
    if reg.state in ("expired", "cancelled"):
        raise PreconditionError(f"registration {registration_id} is {reg.state}; the recognition officer must "
                                "register the holder again")
    h = reg.holder
    try:
        holder = HolderRecord.from_dict({k: v for k, v in {
            "codice_fiscale": h.codice_fiscale, "given_name": h.given_name, "surname": h.surname,
            "birth_date": h.birth_date, "sex": reg.sex, "birth_town": reg.birth_town}.items() if v},
            f"registration {registration_id}")
    except (HolderFileError, ValueError) as exc:
        raise PreconditionError(f"registration {registration_id} holds holder data this agent refuses: {exc}") from None
    return reg, holder


def check_registration_for_card(reg, serial: str) -> None:
    """A registration used for another card is refused before anything is journaled or written."""
    if reg.state == "used" and reg.card_id and reg.card_id != serial:
        raise PreconditionError(f"registration {reg.registration_id} was already used for card {reg.card_id}; "
                                "a registration issues one card: the recognition officer must register the "
                                "holder again")
