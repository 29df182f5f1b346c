"""``cnsctl registration``: a recognition officer's commands (deferred issuance, issue 19).

    cnsctl --config ir.toml registration add --holder holder.toml --form form.pdf [--expires-days N]
    cnsctl --config ir.toml registration show REG-…
    cnsctl --config ir.toml registration list [--all]
    cnsctl --config ir.toml registration cancel REG-… [--reason TEXT]

The holder file is the agent's holder TOML (a ``[holder]`` table: codice_fiscale,
given_name, surname, birth_date YYYY-MM-DD, sex, birth_town; issuer and
validity_years are the station's business and are ignored here). Holder and form
are judged here first (``cns_spec`` rules, ``registrations.check_form``) so a
mistake costs no call, and judged again by the personalizer. ``InputError``
names the file and the key; ``cnsctl`` prints it as one line.

Imports proto, ``cns_spec`` and ``personalizer.rules.registrations`` / ``validation`` (pure); never the agent.
"""
from __future__ import annotations

import datetime as _dt
import tomllib
from pathlib import Path

from personalizer.rules import registrations
from personalizer.errors import InvalidRequest
from proto.cns.v1 import common_pb2, registrations_pb2 as rpb, registrations_pb2_grpc as rpb_grpc

HOLDER_KEYS = ("codice_fiscale", "given_name", "surname", "birth_date", "sex", "birth_town")
IGNORED_KEYS = ("issuer", "validity_years")


class InputError(Exception):
    """A holder or form file that cannot be registered: one line naming the file (and key)."""


def _ts(value: int) -> str:
    return _dt.datetime.fromtimestamp(value, _dt.timezone.utc).isoformat() if value else "-"


def load_holder(path: Path) -> dict[str, str]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"{path}: not a readable TOML file: {exc}") from None
    table = data.get("holder")
    if not isinstance(table, dict):
        raise InputError(f"{path}: holder: missing [holder] table")
    out = {}
    for key, value in table.items():
        if key in IGNORED_KEYS:
            continue
        if key not in HOLDER_KEYS:
            raise InputError(f"{path}: holder.{key}: unknown key; expected one of {', '.join(HOLDER_KEYS)}")
        if key == "birth_date" and isinstance(value, _dt.date) and not isinstance(value, _dt.datetime):
            value = value.isoformat()   # birth_date = 1980-01-01 (a TOML date) is what an officer means
        if not isinstance(value, str):
            raise InputError(f"{path}: holder.{key}: expected a string, got {type(value).__name__} {value!r}")
        out[key] = value
    for key in HOLDER_KEYS[:4]:
        if not out.get(key, "").strip():
            raise InputError(f"{path}: holder.{key}: missing; expected a non-empty string")
    try:
        from personalizer.rules import validation
        holder = validation.check_holder(out["codice_fiscale"], out["given_name"], out["surname"], out["birth_date"])
        registrations.check_card_fields(holder, out.get("sex", ""), out.get("birth_town", ""))
    except InvalidRequest as exc:
        raise InputError(f"{path}: holder.{exc.field.removeprefix('holder.')}: {exc.message}") from None
    return out


def load_form(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > registrations.MAX_FORM_BYTES:
            raise InputError(f"{path}: {size} bytes; the form may have at most "
                             f"{registrations.MAX_FORM_BYTES // (1024 * 1024)} MiB: scan it at a lower resolution")
        form = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        registrations.check_form(form)
    except InvalidRequest as exc:
        raise InputError(f"{path}: {exc.message}") from None
    return form


def _out(r: rpb.Registration) -> dict:
    h = r.holder
    return {"registration_id": r.registration_id, "state": r.state, "chamber": r.chamber_code,
            "codice_fiscale": h.codice_fiscale, "holder": f"{h.given_name} {h.surname}", "birth_date": h.birth_date,
            "sex": r.sex, "birth_town": r.birth_town, "form": f"{r.form_type} {r.form_size} bytes",
            "form_sha256": r.form_sha256, "created_by": r.created_by, "created_at": _ts(r.created_at),
            "expires_at": _ts(r.expires_at), "used_by": r.used_by or "-", "used_operator": r.used_operator_id or "-",
            "used_at": _ts(r.used_at), "card": r.card_id or "-", "request_id": r.request_id or "-",
            "cancelled_by": r.cancelled_by or "-", "cancelled_at": _ts(r.cancelled_at)}


def run(ch, opts, timeout) -> dict:
    stub = rpb_grpc.RegistrationsStub(ch)
    if opts.registration_command == "add":
        h = load_holder(opts.holder)
        form = load_form(opts.form)
        r = stub.RegisterHolder(rpb.RegisterHolderRequest(
            holder=common_pb2.Holder(codice_fiscale=h["codice_fiscale"], given_name=h["given_name"],
                                     surname=h["surname"], birth_date=h["birth_date"]),
            sex=h.get("sex", ""), birth_town=h.get("birth_town", ""), form=form, expires_days=opts.expires_days),
            timeout=timeout)
        return _out(r)
    if opts.registration_command == "cancel":
        return _out(stub.CancelRegistration(rpb.CancelRegistrationRequest(registration_id=opts.registration_id,
                                                                          reason=opts.reason), timeout=timeout))
    if opts.registration_command == "show":
        return _out(stub.GetRegistration(rpb.GetRegistrationRequest(registration_id=opts.registration_id),
                                         timeout=timeout))
    r = stub.ListRegistrations(rpb.ListRegistrationsRequest(include_closed=opts.all, chamber_code=opts.chamber),
                               timeout=timeout)
    return {"registrations": [_out(x) for x in r.registrations], "count": len(r.registrations)}


def add_parser(sub, positive_int) -> None:
    p = sub.add_parser("registration", help="deferred issuance: register holders (recognition officer)")
    rsub = p.add_subparsers(dest="registration_command", required=True)
    a = rsub.add_parser("add", help="register a holder with the signed request form")
    a.add_argument("--holder", required=True, type=Path, help="holder TOML file ([holder] table)")
    a.add_argument("--form", required=True, type=Path, help="the signed request form: PDF, PNG or JPEG, ≤ 10 MiB")
    a.add_argument("--expires-days", type=positive_int, default=registrations.DEFAULT_EXPIRES_DAYS,
                   help=f"days a station may complete it in (default {registrations.DEFAULT_EXPIRES_DAYS}, "
                        f"at most {registrations.MAX_EXPIRES_DAYS})")
    a.set_defaults(func=run)
    s = rsub.add_parser("show", help="one registration")
    s.add_argument("registration_id")
    s.set_defaults(func=run)
    c = rsub.add_parser("cancel", help="cancel a registration not yet used for a card (e.g. a mistyped one)")
    c.add_argument("registration_id")
    c.add_argument("--reason", default="", help="why (kept in the audit trail)")
    c.set_defaults(func=run)
    li = rsub.add_parser("list", help="the chamber's open registrations, newest first")
    li.add_argument("--all", action="store_true", help="also used and expired ones")
    li.add_argument("--chamber", default="", help="central IT: only this chamber")
    li.set_defaults(func=run)


__all__ = ["InputError", "add_parser", "load_form", "load_holder", "run"]
