"""``cns-agent renew --self``: a holder renews their own card from their own computer.

    cns-agent renew --self --reader "…" --personalizer HOST[:PORT] --trust CA.pem [--server-name NAME]
                    [--data-dir DIR] [--codes-file codes.toml | --codes-stdin] [--json]

No station certificate: the personalizer's enrollment port (TLS, server
authenticated by ``--trust`` only) takes the renewal because the card signs it
with its current keys after the holder's PIN (``personalizer.edge.self_renewal``).
The renewal is the operator's — ``agent.ops.renew.Renewer``, same steps,
journal and recovery — with ``agent.uplink.self_renewal.HolderUplink``; the
journal lives in ``--data-dir`` (default ``$XDG_DATA_HOME/cns-agent/holder``).
An interrupted renewal (card pulled, personalizer unreachable, Ctrl-C) is
finished by running the same command again. The card's issuer key (needed
to write the spare slots) never comes here (issue 12): its challenges are
answered by the personalizer (``HolderRenewal.AuthenticateCard``) only with
the card's proof of its holder: its authentication key signs a fresh nonce
after the PIN (``agent.ops.card_proof``). Exit 0 when the card carries the new certificates,
1 when undone, left open or refused (one line says why and what to do).
Imports ``agent.ops``, ``agent.uplink``, ``agent.devices``; the renewal's modules (cryptography, asn1crypto,
gRPC stubs) only when a renewal runs: ``cns-agent run`` imports this module too (issue 18: idle RSS).
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
from pathlib import Path
from typing import Callable

from agent.card.errors import CardError
from agent.commands import CommandError
from agent.ops.errors import OperationError, UplinkError, UplinkUnavailable
from agent.ops.holder import Codes
from agent.ops.journal import Journal
from cns_spec.validity import DEFAULT_RENEWAL_WINDOW_DAYS
from station_config import MAX_WINDOW_DAYS

DEFAULT_PORT = 50052    # the enrollment port (agent.uplink.enroll.DEFAULT_ENROLL_PORT)


def add_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("holder self-renewal (--self)")
    g.add_argument("--self", dest="self_renewal", action="store_true",
                   help="renew your own card, without a station: the card authorises the renewal")
    g.add_argument("--personalizer", help="HOST[:PORT] of the personalizer's renewal port")
    g.add_argument("--trust", type=Path, help="the CA file (PEM) the personalizer's certificate is checked with")
    g.add_argument("--server-name", default=None, help="TLS name of the personalizer, when HOST is an address")
    g.add_argument("--data-dir", type=Path, default=None, help="where the renewal journal is kept")
    g.add_argument("--window-days", type=_window_days, default=None, metavar="DAYS",
                   help=f"offer renewal from DAYS before the certificates expire (default "
                        f"{DEFAULT_RENEWAL_WINDOW_DAYS}; {MAX_WINDOW_DAYS} = at any time, for hardware testers)")


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "cns-agent" / "holder"


def _endpoint(value: str | None) -> str:
    if not value:
        raise CommandError("--self needs --personalizer HOST[:PORT] (ask your chamber for the address)")
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        return f"{value}:{DEFAULT_PORT}"
    if not host or not 0 < int(port) < 65536:
        raise CommandError(f"--personalizer {value!r}: expected HOST[:PORT] with a port from 1 to 65535")
    return value


def _trust(path: Path | None) -> bytes:
    if path is None:
        raise CommandError("--self needs --trust CA.pem: the CA file your chamber gave you")
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise CommandError(f"--trust {path}: cannot read it ({exc.strerror}); give the CA file your chamber "
                           "gave you") from None
    if b"-----BEGIN CERTIFICATE-----" not in pem:
        raise CommandError(f"--trust {path}: not a PEM certificate file; give the CA file your chamber gave you")
    return pem


def _window_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = 0
    if not 1 <= days <= MAX_WINDOW_DAYS:
        raise argparse.ArgumentTypeError(f"expected a whole number of days from 1 to {MAX_WINDOW_DAYS}, got {text!r}")
    return days


def _open_certificates(ops) -> list[bytes]:
    """Certificates of the open renewals in this journal: the holder's identity for reading their requests."""
    out = []
    for op in ops:
        for key, value in sorted(op.data.items()):
            if key.startswith("current_") and isinstance(value, str):
                out.append(base64.b64decode(value))
    return out


async def run_self_renewal(*, journal_path: Path, endpoint: str, trust_pem: bytes, server_name: str | None,
                           connect, reader: str, model, codes: Codes, progress,
                           policy: RenewalPolicy | None = None,
                           holder_uplink=None):   # HolderUplink, or a factory with its signature (benchmarks)
    """Start the card's renewal, or finish its open one, through ``HolderUplink``; the ``Outcome``."""
    from agent.ops.renew import KIND, RenewalPolicy, Renewer
    from agent.uplink.card_admin import HolderCardAdmin
    from agent.uplink.self_renewal import HOLDER_STATION, HolderUplink

    journal_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    j = await Journal.open(journal_path)
    try:
        ops = [o for o in await j.open_operations() if o.kind == KIND]
        async with (holder_uplink or HolderUplink)(endpoint, trust_pem, server_name=server_name,
                                                   holder_certificates=_open_certificates(ops)) as uplink:
            requester = {"station_id": HOLDER_STATION, "chamber_code": "", "operator_id": "holder"}
            # the card proves its holder (PIN) for each answer (agent.ops.card_proof)
            card_admin = HolderCardAdmin(uplink, codes).for_operation(KIND, requester)
            renewer = Renewer(journal=j, uplink=uplink, card_admin=card_admin, progress=progress,
                              requester=requester,
                              policy=policy or RenewalPolicy())
            return await renewer.start(connect=connect, reader=reader, model=model, codes=codes)
    finally:
        await j.close()


def _pcsc(reader: str):
    """(connect, model) for the card in ``reader`` through PC/SC; the model from its ATR."""
    from smartcard import scard

    from agent.devices.pcsc import PcscLink
    from agent.devices.catalog import Catalog

    try:
        link = PcscLink(reader)
    except CardError as exc:
        raise CommandError(f"reader {reader!r}: {exc}; insert your card and check the name with "
                           "`cns-agent devices`") from None
    try:
        atr = bytes(scard.SCardStatus(link.transport.hcard)[4])
    finally:
        link.close()
    model = Catalog.load().identify(atr)
    if model is None:
        raise CommandError(f"the card in {reader!r} is not a supported CNS card (ATR {atr.hex()})")
    return (lambda: PcscLink(reader)), model


def self_renew(args: argparse.Namespace, pin: str | Callable[[], str], *, connect=None, model=None) -> int:
    """The ``--self`` branch of ``cns-agent renew``. ``pin``: the PIN, or how to ask for it (after the options
    are checked: nobody types a PIN for a command that then fails on a typo). ``connect``/``model``: tests pass
    an emulated card."""
    from agent.ops.renew import RenewalPolicy

    endpoint, trust = _endpoint(args.personalizer), _trust(args.trust)
    try:
        codes = Codes(pin() if callable(pin) else pin, None)
    except ValueError as exc:
        raise CommandError(f"the PIN is required to renew: {exc}") from None
    if connect is None:
        connect, model = _pcsc(args.reader)

    def progress(step: str, message: str) -> None:
        print(json.dumps({"step": step, "message": message}) if args.json else f"  {step:24} {message}", flush=True)
    journal = (args.data_dir or default_data_dir()) / "journal.db"
    try:
        out = asyncio.run(run_self_renewal(journal_path=journal, endpoint=endpoint, trust_pem=trust,
                                           server_name=args.server_name, connect=connect, reader=args.reader,
                                           model=model, codes=codes, progress=progress,
                                           policy=RenewalPolicy(window_days=args.window_days)
                                           if args.window_days else None))
    except UplinkUnavailable as exc:
        raise CommandError(f"{exc}. Your card keeps its current certificates; run the same command again "
                           "later to finish the renewal") from None
    except (UplinkError, OperationError, CardError) as exc:
        raise CommandError(f"renewal not done: {exc}") from None
    if args.json:
        print(json.dumps({"result": out.as_dict()}), flush=True)
    else:
        print(f"card {out.card_serial}: renewal {out.state} {out.message}".rstrip(), flush=True)
    return 0 if out.state == "done" else 1
