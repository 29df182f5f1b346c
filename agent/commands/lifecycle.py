"""``cns-agent cert``: certificate status, suspension, reactivation and revocation through the agent.

    cns-agent cert status     (--reader R | --serial HEX [HEX...] | --card SERIAL | --cf CF) [--json]
    cns-agent cert suspend    (--reader R | --serial HEX [HEX...] | --card SERIAL) [--json]
    cns-agent cert reactivate (--reader R | --serial HEX [HEX...] | --card SERIAL) [--json]
    cns-agent cert revoke     [--reason R] [--yes] (--reader R | --serial HEX [HEX...] | --card SERIAL) [--json]

With ``--reader`` the command acts on both certificates of the card in that
reader (CNS0 authentication, CNS1 signature); with ``--serial`` on the
certificates named (the card is lost or absent); with ``--card`` on every
certificate the personalizer issued for that card serial, and ``status --cf``
lists every certificate of a holder (codice fiscale). ``revoke`` is final: on
a terminal it shows the certificates and asks for "yes"; elsewhere it needs
``--yes``. The running agent
(``cns-agent run --config``) asks the personalizer, which records who, from
which station and with what result in its audit trail. A change the
personalizer refuses (e.g. reactivating a revoked certificate) prints its
reason and exits 1.

Also holds ``local_call``, the call helper of the lifecycle and PIN commands.
Imports ``proto`` and ``agent.commands`` only.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys

import grpc

from agent.commands import CommandError, add_socket_option, socket_path
from cns_spec.reasons import REVOCATION_REASONS as REASONS
from proto.cns.v1 import agent_pb2 as pb
from proto.cns.v1 import agent_pb2_grpc as pb_grpc

PIN_STATUS_KEY = "cns-pin-status-bin"   # agent.api.lifecycle.PIN_STATUS_KEY
CALL_TIMEOUT_S = 120.0                  # a change waits for the CA per certificate


class LocalCallError(CommandError):
    """The agent refused or failed the call; ``code`` (gRPC name) and, for PIN calls, ``pin_status``."""

    def __init__(self, code: str, message: str, pin_status: pb.PinStatus | None = None):
        super().__init__(message)
        self.code = code
        self.pin_status = pin_status


def local_call(args: argparse.Namespace, method: str, request, *, timeout: float = CALL_TIMEOUT_S):
    path = socket_path(args)
    if not path.exists():
        raise CommandError(f"no agent is running (no socket at {path}); start one with "
                           "`cns-agent run --config FILE`")
    with grpc.insecure_channel(f"unix:{path}") as channel:
        try:
            return getattr(pb_grpc.AgentLocalStub(channel), method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE,) and "personalizer" not in (exc.details() or ""):
                raise CommandError(f"no agent answers on {path} ({exc.details()}); start one with "
                                   "`cns-agent run --config FILE`") from None
            status = None
            for key, value in exc.trailing_metadata() or ():
                if key == PIN_STATUS_KEY:
                    status = pb.PinStatus.FromString(value)
            raise LocalCallError(code.name, exc.details() or code.name, status) from None


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cert", help="certificate status, suspend, reactivate, revoke (through the personalizer)",
                       description=__doc__.split("\n\nAlso holds")[0].split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    csub = p.add_subparsers(dest="cert_command", required=True, metavar="ACTION")
    for name, help_ in (("status", "show the certificates' status at the CA"),
                        ("suspend", "suspend the certificates (reversible)"),
                        ("reactivate", "reactivate suspended certificates"),
                        ("revoke", "revoke the certificates (final: they never come back)")):
        c = csub.add_parser(name, help=help_)
        target = c.add_mutually_exclusive_group(required=True)
        target.add_argument("--reader", help="both certificates of the card in this reader (see `cns-agent devices`)")
        target.add_argument("--serial", nargs="+", metavar="HEX",
                            help="certificate serial numbers in hex (card absent, e.g. lost)")
        target.add_argument("--card", metavar="SERIAL",
                            help="every certificate issued for this card serial (card absent, e.g. lost)")
        if name == "status":
            target.add_argument("--cf", metavar="CODICE_FISCALE", help="every certificate of this holder")
        if name == "revoke":
            c.add_argument("--reason", default="unspecified", choices=REASONS, metavar="REASON",
                           help="RFC 5280 reason: " + ", ".join(REASONS) + " (default unspecified)")
            c.add_argument("--yes", action="store_true",
                           help="revoke without asking (scripts); on a terminal the command asks first")
        c.add_argument("--json", action="store_true", help="one JSON object")
        add_socket_option(c)
        c.set_defaults(func=cert, action=name)


def _day(unix: int) -> str:
    return _dt.datetime.fromtimestamp(unix, _dt.timezone.utc).date().isoformat() if unix else "?"


def response_dict(resp: pb.CardCertificatesResponse) -> dict:
    return {"card_serial": resp.card_serial, "message": resp.message, "certificates": [
        {"keyset": c.keyset, "serial_hex": c.serial_hex, "subject": c.subject, "issuer": c.issuer,
         "not_before": _day(c.not_before_unix), "not_after": _day(c.not_after_unix), "status": c.status,
         "revocation_reason": c.revocation_reason,
         "status_changed": (_dt.datetime.fromtimestamp(c.status_changed_unix, _dt.timezone.utc)
                            .isoformat(timespec="seconds") if c.status_changed_unix else "")}
        for c in resp.certificates]}


def _confirm_revoke(args: argparse.Namespace, target: dict) -> None:
    """``revoke`` is final: on a terminal show what it hits and ask; elsewhere require ``--yes``."""
    if args.yes:
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CommandError("revoke is final: not on a terminal, so nothing was asked and nothing revoked; "
                           "add --yes to revoke from a script")
    try:
        st = local_call(args, "GetCertificateStatus", pb.CardCertificatesRequest(**target))
    except LocalCallError as exc:
        raise CommandError(f"{exc.code}: {exc}") from None
    _print(response_dict(st))
    try:
        answer = input(f"Revoke these certificates ({args.reason})? This cannot be undone. Type yes: ")
    except EOFError:
        answer = ""
    if answer.strip().lower() != "yes":
        raise CommandError("not revoked (the answer was not yes)")


def cert(args: argparse.Namespace) -> int:
    serials = list(args.serial or [])
    target = {"reader": args.reader or "", "certificate_serials": serials, "card_serial": args.card or ""}
    if args.action == "status":
        method, request = "GetCertificateStatus", pb.CardCertificatesRequest(
            **target, codice_fiscale=getattr(args, "cf", None) or "")
    else:
        if args.action == "revoke":
            _confirm_revoke(args, target)
        method, request = "ChangeCertificateStatus", pb.ChangeCertificateStatusRequest(
            action=args.action, reason=getattr(args, "reason", "") if args.action == "revoke" else "", **target)
    try:
        resp = local_call(args, method, request)
    except LocalCallError as exc:
        if args.json:
            print(json.dumps({"error": {"code": exc.code, "message": str(exc)}}), flush=True)
        raise CommandError(f"{exc.code}: {exc}") from None
    d = response_dict(resp)
    if args.json:
        print(json.dumps(d), flush=True)
        return 0
    _print(d)
    return 0


def _print(d: dict) -> None:
    if d["card_serial"]:
        print(f"card {d['card_serial']}")
    for c in d["certificates"]:
        status = c["status"] + (f" ({c['revocation_reason']})" if c["revocation_reason"] else "")
        print(f"  {c['keyset'] or '-':4}  serial {c['serial_hex']:<40}  {status:<24} "
              f"valid {c['not_before']} to {c['not_after']}  {c['subject']}".rstrip())
    if d["message"]:
        print(d["message"])
