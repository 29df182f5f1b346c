"""What an outbox row carries: the kinds, their lanes, and the payload encoding.

A payload holds everything the relay needs to call the CA after a restart
(JSON, bytes as base64): for issuance and renewal the CSR, the holder, the
card id and the CN hash; for status changes the certificate reference and
the reason. No secrets are ever in a payload (a CSR and holder data only).

Imports nothing of ours but ``records`` (lane names).
"""
from __future__ import annotations

import base64
import json
from dataclasses import asdict, dataclass

from personalizer.records import LANE_PRIORITY, LANE_STANDARD

KIND_ISSUE = "issue"
KIND_RENEW = "renew"
KIND_SUSPEND = "suspend"
KIND_REACTIVATE = "reactivate"
KIND_REVOKE = "revoke"
ISSUANCE_KINDS = (KIND_ISSUE, KIND_RENEW)
CHANGE_KINDS = (KIND_SUSPEND, KIND_REACTIVATE, KIND_REVOKE)
KINDS = ISSUANCE_KINDS + CHANGE_KINDS
# Suspension and revocation MUST be 24x7 (SLA4.1). Reactivation rides the same lane: it only undoes a
# suspension made through it, and a holder should not wait for Monday to get a suspended card back.
LANE_OF = {KIND_ISSUE: LANE_STANDARD, KIND_RENEW: LANE_STANDARD, KIND_SUSPEND: LANE_PRIORITY,
           KIND_REACTIVATE: LANE_PRIORITY, KIND_REVOKE: LANE_PRIORITY}


@dataclass(frozen=True)
class IssuancePayload:
    profile: str
    csr_der: bytes
    codice_fiscale: str
    given_name: str
    surname: str
    birth_date: str          # ISO date
    card_id: str
    dati_personali_hash: str | None
    card_model: str = ""     # the device model the station reported (daily archive); "" in older rows

    def encode(self) -> bytes:
        d = asdict(self)
        d["csr_der"] = base64.b64encode(self.csr_der).decode()
        return json.dumps(d, sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "IssuancePayload":
        d = json.loads(raw)
        d["csr_der"] = base64.b64decode(d["csr_der"])
        return cls(**d)


@dataclass(frozen=True)
class ChangePayload:
    issuer_dn: str
    serial_hex: str
    reason: str = ""

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> "ChangePayload":
        return cls(**json.loads(raw))
