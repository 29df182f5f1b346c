"""An in-memory ``Uplink`` (agent.ops.uplink) over a real personalizer broker: no gRPC, no daemon process.

``InMemoryUplink(broker, relay=None)`` answers the calls the agent's operations make
by calling the broker as the gRPC edge does (``personalizer.edge.service``), in the
same event loop: requests are validated, journaled in the store and delivered to
the CA by the relay exactly as in the daemon. What it leaves out is the wire:
TLS, the caller's certificate and the chamber check of the edge (the requester
is trusted as given). Answers are the domain records of ``agent.ops.uplink``
(``RequestRecord``, ``CAStatusRecord``), the same the gRPC uplink returns; a ``PersonalizerError`` is classified with
``agent.ops.uplink.is_refusal`` into ``UplinkError`` / ``UplinkUnavailable``,
as the gRPC uplink classifies the status it carries.

The request path (submit_issue, renew, get_request, watch_request, ca_status) and
the certificate lifecycle (certificate_status, change_status, find_certificates);
registrations raise ``NotImplementedError`` until a test needs them. Tests may
import agent and personalizer both.
"""
from __future__ import annotations

from typing import Any, AsyncIterator

from agent.ops.errors import UplinkError, UplinkUnavailable
from agent.ops.uplink import CAStatusRecord, CertificateRef, RequestErrorRecord, RequestRecord, is_refusal
from cns_spec import requests
from personalizer.errors import PersonalizerError
from personalizer.outbox.broker import Broker, IssueInput, RenewInput


def _answer(rec) -> RequestRecord:
    return RequestRecord(request_id=rec.request_id, state=requests.CODES[rec.state],
                         certificate_der=rec.certificate_der or b"", chain_der=tuple(rec.chain_der),
                         error=RequestErrorRecord(rec.error_code or "", rec.error_field or "", rec.error_message or ""),
                         certificate=CertificateRef(rec.issuer_dn or "", (rec.serial_hex or "").upper()),
                         kind=rec.kind, attempts=rec.attempts)


def _classified(exc: PersonalizerError, what: str) -> UplinkError:
    msg = f"personalizer: {what}: {exc.code}: {exc}"
    return UplinkError(msg, code=exc.code) if is_refusal(exc.code) else UplinkUnavailable(msg, code=exc.code)


class InMemoryUplink:
    def __init__(self, broker: Broker, *, relay: Any = None, actor: str = "urn:cns:station:in-memory",
                 card_admin: Any = None) -> None:
        self.broker, self.relay, self.actor = broker, relay, actor
        self._card_admin = card_admin   # a CardAuthenticator (agent.card.issuer) for card_admin()
        self.calls: list[str] = []     # method names, in order (what the operation asked)

    async def _do(self, method: str, what: str, coro):
        self.calls.append(method)
        try:
            return await coro
        except PersonalizerError as exc:
            raise _classified(exc, what) from exc

    async def submit_issue(self, *, request_id: str, profile: str, csr_der: bytes, holder: dict, card_id: str,
                           model: str, requester: dict, ef_dati_personali: bytes = b"",
                           registration_id: str = "") -> RequestRecord:
        inp = IssueInput(request_id=request_id, profile=profile, csr_der=csr_der,
                         codice_fiscale=holder.get("codice_fiscale", ""), given_name=holder.get("given_name", ""),
                         surname=holder.get("surname", ""), birth_date=holder.get("birth_date", ""),
                         card_id=card_id, card_model=model, station_id=requester.get("station_id", ""),
                         chamber_code=requester.get("chamber_code", ""), operator_id=requester.get("operator_id", ""),
                         ef_dati_personali=ef_dati_personali, registration_id=registration_id)
        return _answer(await self._do("submit_issue", f"issue request {request_id}",
                                      self.broker.submit_issue(inp, actor=self.actor)))

    async def renew(self, *, request_id: str, profile: str, csr_der: bytes, current_certificate_der: bytes,
                    proof_of_possession: bytes, requester: dict) -> RequestRecord:
        inp = RenewInput(request_id=request_id, profile=profile, csr_der=csr_der,
                         current_certificate_der=current_certificate_der, proof_of_possession=proof_of_possession,
                         station_id=requester.get("station_id", ""), chamber_code=requester.get("chamber_code", ""),
                         operator_id=requester.get("operator_id", ""))
        return _answer(await self._do("renew", f"renew request {request_id}",
                                      self.broker.submit_renew(inp, actor=self.actor)))

    async def get_request(self, request_id: str) -> RequestRecord:
        return _answer(await self._do("get_request", f"request {request_id}", self.broker.get(request_id)))

    async def watch_request(self, request_id: str) -> AsyncIterator[RequestRecord]:
        self.calls.append("watch_request")
        try:
            async for rec in self.broker.watch(request_id):
                yield _answer(rec)
        except PersonalizerError as exc:
            raise _classified(exc, f"watching request {request_id}") from exc

    async def ca_status(self) -> CAStatusRecord:
        health = await self._do("ca_status", "CA status", self.broker.ca.health())
        out = CAStatusRecord(operational=health.operational, detail=health.detail,
                             reactivation_at=int(health.reactivation_at.timestamp()) if health.reactivation_at else 0)
        relay = self.relay
        if relay is not None and relay.active_maintenance() is not None:
            m = relay.active_maintenance()
            out = CAStatusRecord(operational=False, detail=f"planned maintenance: {m.reason}".rstrip(": "),
                                 in_maintenance=True, reactivation_at=int(m.ends_at.timestamp()))
        return out

    async def get_registration(self, registration_id: str):
        raise NotImplementedError("InMemoryUplink: registrations are not wired (use the daemon)")

    # The lifecycle calls convert as the wire does, with both sides' own converters (the edge's
    # ``status_to_proto`` and the agent's ``records``): no third copy of the mapping.
    async def _status(self, ref, what: str):
        from agent.uplink import records
        from personalizer.edge.service import status_to_proto
        from personalizer.errors import NotFound
        info = await self._do("certificate_status", what, self.broker.ca.status(ref))
        if info is None:
            raise _classified(NotFound(f"no certificate {ref.serial_hex} from {ref.issuer_dn!r}"), what)
        return info, records.certificate_status(status_to_proto(info))

    async def certificate_status(self, *, issuer_dn: str = "", serial_hex: str = "", request_id: str = ""):
        from personalizer.ca.base import CertRef
        from personalizer.errors import NotFound
        what = f"status of {serial_hex or request_id}"
        if request_id:
            rec = await self._do("certificate_status", what, self.broker.get(request_id))
            if not rec.issuer_dn:
                raise _classified(NotFound(f"request {request_id!r} has no certificate (state {rec.state})"), what)
            ref = CertRef(rec.issuer_dn, rec.serial_hex)
        else:
            ref = CertRef(issuer_dn, serial_hex.upper())
        return (await self._status(ref, what))[1]

    async def change_status(self, action: str, *, request_id: str, issuer_dn: str, serial_hex: str,
                            requester: dict, reason: str = ""):
        import dataclasses

        from personalizer.ca.base import CertRef
        from personalizer.outbox.broker import ChangeInput
        if action not in ("suspend", "reactivate", "revoke"):
            raise ValueError(f"unknown status change {action!r}: suspend, reactivate or revoke")
        what = f"{action} {serial_hex}"
        inp = ChangeInput(request_id=request_id, kind=action, ref=CertRef(issuer_dn, serial_hex.upper()),
                          reason=reason, station_id=requester.get("station_id", ""),
                          chamber_code=requester.get("chamber_code", ""),
                          operator_id=requester.get("operator_id", ""))
        rec = await self._do("change_status", what, self.broker.submit_change(inp, actor=self.actor))
        _, out = await self._status(CertRef(rec.issuer_dn, rec.serial_hex), what)
        return dataclasses.replace(out, change_request_id=rec.request_id, change_state=requests.CODES[rec.state])

    async def find_certificates(self, *, card_id: str = "", codice_fiscale: str = ""):
        from agent.ops.uplink import FoundCertificate, FoundCertificates
        from agent.uplink import records
        from personalizer.edge.service import PROFILE_ENUMS, status_to_proto
        found = await self._do("find_certificates", f"certificates of {card_id or codice_fiscale}",
                               self.broker.find_certificates(card_id=card_id, holder_cf=codice_fiscale.upper()))
        from cryptography import x509
        return FoundCertificates(tuple(FoundCertificate(
            status=records.certificate_status(status_to_proto(f.info)), profile=PROFILE_ENUMS.get(f.profile, 0),
            card_id=f.card_id, codice_fiscale=f.holder_cf, chamber_code=f.chamber_code,
            subject=x509.load_der_x509_certificate(f.certificate_der).subject.rfc4514_string()) for f in found))

    def card_admin(self, kind: str, requester: dict):
        """The ``card_admin`` authenticator this uplink was given (e.g. the emulator's
        ``SoftwareAuthenticator``: a test double for the personalizer's token, named so)."""
        if self._card_admin is None:
            raise NotImplementedError("InMemoryUplink(card_admin=...) was not given a card authenticator")
        return self._card_admin

    async def close(self) -> None:
        pass
