"""The holder's self-renewal port in process, for ``renew-faults --holder``: ``HolderRenewal`` without gRPC.

``LocalHolderUplink`` is the agent's own ``agent.uplink.self_renewal.HolderUplink`` (its ``renew``,
``get_request``, ``certificate_status``, ``change_status``, the holder certificates it reads with) whose
one gRPC call, ``_call(method, request, what)``, is answered by the personalizer's
``personalizer.edge.self_renewal.SelfRenewal`` rules in this process (the real broker, relay, store, embedded
CA and ``CardAdmin`` token), as ``HolderRenewalService`` answers it on the enrollment port; the agent's
``HolderCardAdmin`` (the card's proof for card administration) runs unchanged over it. Errors translate as the
port's statuses reach the agent: UNAVAILABLE → ``UplinkUnavailable``, anything else → ``UplinkError`` with the
code. ``base.down`` (the operator adapter's fault switch) makes every call unreachable; the relay is stepped
after each call (``base._pump``), as the operator adapter does.

Imports ``agent.uplink`` and ``personalizer`` (a benchmark sits above both) and ``proto``.
"""
from __future__ import annotations

from agent.ops.errors import UplinkError, UplinkUnavailable
from agent.uplink.self_renewal import HolderUplink
from personalizer.edge.self_renewal import SelfRenewal
from personalizer.edge.service import STATE_ENUMS, _ref, record_to_proto, status_to_proto
from personalizer.errors import PersonalizerError
from proto.cns.v1 import card_admin_pb2, self_renewal_pb2 as srpb

PEER = "bench-holder"   # the holder's address as the port sees it (nonces are bound to it)


class LocalHolderUplink(HolderUplink):
    def __init__(self, base, rules: SelfRenewal, card_admin, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.base, self.rules, self.card_admin = base, rules, card_admin

    def _connect(self) -> None:   # no channel: _call answers in process
        pass

    async def close(self) -> None:
        pass

    async def watch_request(self, request_id: str):
        yield await self.get_request(request_id)

    async def _call(self, method: str, request, what: str):
        self.base._check()
        try:
            out = await self._answer(method, request)
        except PersonalizerError as exc:
            if exc.code == "UNAVAILABLE":
                raise UplinkUnavailable(f"personalizer: {what}: {exc}", code=exc.code) from exc
            raise UplinkError(f"personalizer: {what}: {exc.code}: {exc}", code=exc.code) from exc
        self.base._check()
        return out

    async def _answer(self, method: str, r):
        base, rules = self.base, self.rules
        if method == "SelfRenew":
            await rules.renew(request_id=r.request_id, profile=r.profile, csr_der=r.csr_der,
                              current_certificate_der=r.current_certificate_der,
                              proof_of_possession=r.proof_of_possession)
            await base._pump()
            return record_to_proto(await base.store.get_request(r.request_id))
        if method == "GetRequest":
            await rules.readable(r.request_id, r.current_certificate_der)
            await base._pump()
            return record_to_proto(await base.store.get_request(r.request_id))
        if method == "GetCertificateStatus":
            return status_to_proto(await rules.status(_ref(r)))
        if method == "RevokeOwn":
            ref = _ref(r.certificate)
            rec, _ = await rules.revoke_own(request_id=r.request_id, ref=ref, reason=r.reason)
            await base._pump()
            out = status_to_proto(await rules.status(ref))
            out.change_request_id = rec.request_id
            out.change_state = STATE_ENUMS[(await base.store.get_request(rec.request_id)).state]
            return out
        if method == "CardAuthNonce":
            return srpb.SelfCardNonce(nonce=await rules.card_nonce(
                current_certificate_der=r.current_certificate_der, card_serial=r.card_serial, peer=PEER))
        if method == "AuthenticateCard":
            return card_admin_pb2.CardAuthResponse(cryptogram=await rules.authenticate_card(
                self.card_admin, current_certificate_der=r.current_certificate_der, card_serial=r.card_serial,
                card_model=r.card_model, challenge=r.challenge, operation_id=r.operation_id, nonce=r.nonce,
                proof=r.proof, rate_key="holder@" + PEER, peer=PEER))
        raise AssertionError(f"HolderRenewal has no {method}")


def factory(base, rules: SelfRenewal, card_admin):
    """A ``holder_uplink`` for ``agent.commands.self_renew.run_self_renewal`` (HolderUplink's signature)."""
    def make(endpoint, trust_pem, **kwargs) -> LocalHolderUplink:
        return LocalHolderUplink(base, rules, card_admin, endpoint, trust_pem, **kwargs)
    return make
