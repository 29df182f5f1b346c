"""``cnsctl cards``: central IT loads a batch of blank cards and its manufacturer transport key (issue 12).

    cnsctl --config admin.toml cards load-batch --batch ID --chamber RM --model MODEL
           --first SERIAL --last SERIAL --key-file FILE
    cnsctl --config admin.toml cards list

The key file holds the batch's transport key as the manufacturer delivered it:
32 hex digits (AES-128) on one line, readable by its owner only (mode 0600,
else refused before any call). The key goes to the personalizer's token over
the admin mTLS channel and is never readable again; the batch (chamber, model,
serial range) is the per-card stock CardAdmin checks. Errors are one line
(``InputError``). Imports proto only.
"""
from __future__ import annotations

from pathlib import Path

from personalizer.cnsctl_registration import InputError
from proto.cns.v1 import card_admin_pb2 as pb, card_admin_pb2_grpc as pb_grpc


def load_key(path: Path) -> bytes:
    try:
        if path.stat().st_mode & 0o077:
            raise InputError(f"--key-file {path}: readable by others; it holds a transport key: chmod 600 it")
        text = path.read_text().strip()
    except OSError as exc:
        raise InputError(f"--key-file {path}: cannot read it ({exc.strerror})") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 16:
        raise InputError(f"--key-file {path}: expected the transport key as 32 hex digits (AES-128) on one line")
    return key


def _out(b) -> dict:
    return {"batch": b.batch_id, "chamber": b.chamber_code, "model": b.card_model, "first": b.first_serial,
            "last": b.last_serial}


def run(ch, opts, timeout) -> dict:
    stub = pb_grpc.CardAdminStub(ch)
    if opts.cards_command == "load-batch":
        key = load_key(opts.key_file)
        return _out(stub.LoadBatch(pb.LoadBatchRequest(
            batch_id=opts.batch, chamber_code=opts.chamber, card_model=opts.model, first_serial=opts.first,
            last_serial=opts.last, transport_key=key), timeout=timeout))
    return {"batches": [_out(b) for b in stub.ListBatches(pb.ListBatchesRequest(), timeout=timeout).batches]}


def add_parser(sub) -> None:
    p = sub.add_parser("cards", help="blank card batches and their transport keys (admin)")
    csub = p.add_subparsers(dest="cards_command", required=True)
    a = csub.add_parser("load-batch", help="load a batch's transport key into the personalizer's token")
    a.add_argument("--batch", required=True, help="the manufacturer's batch id")
    a.add_argument("--chamber", required=True, help="the chamber the batch is sent to, e.g. RM")
    a.add_argument("--model", required=True, help="the card model id (cns-emulator list)")
    a.add_argument("--first", required=True, help="the first card serial of the batch (EF_IDCarta)")
    a.add_argument("--last", required=True, help="the last card serial of the batch")
    a.add_argument("--key-file", required=True, type=Path, help="the transport key: 32 hex digits, mode 0600")
    a.set_defaults(func=run)
    ls = csub.add_parser("list", help="the batches loaded (never their keys)")
    ls.set_defaults(func=run)
