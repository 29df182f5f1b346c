"""``cns-agent devices``, ``watch`` and ``info``: ask the running agent what it sees.

``devices`` prints a table on a terminal (full serials, at any width down to 80
columns), aligned plain columns in a pipe, one JSON object with ``--json``; it
says when the agent cannot reach pcscd. USB tokens (model, serial, firmware,
partition versions, release, chip and its holder when the token's reader is
paired) follow the readers, in a second table and under ``tokens`` in the JSON;
``watch`` shows tokens plugged in, pulled or changed as ``token_*`` events. ``watch`` follows the agent across
restarts: when the stream breaks it says so on stderr and reconnects.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from agent.api.client import AgentCallError, AgentClient, AgentUnavailableError
from agent.commands import CommandError, add_socket_option, socket_path
from proto.cns.v1 import agent_pb2 as pb


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list readers, cards and USB tokens seen by the running agent")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_socket_option(p)
    p.set_defaults(func=devices)
    w = sub.add_parser("watch", help="print device events as they happen (Ctrl-C to stop)")
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    add_socket_option(w)
    w.set_defaults(func=watch)
    i = sub.add_parser("info", help="show the running agent's version, socket and PC/SC status")
    i.add_argument("--json", action="store_true", help="one JSON object (the output is always JSON)")
    add_socket_option(i)
    i.set_defaults(func=info)


def _state(value: int) -> str:
    return pb.DeviceCardState.Name(value).removeprefix("DEVICE_CARD_STATE_").lower()


def card_dict(card: pb.DeviceCard) -> dict:
    return {"atr": card.atr_hex, "state": _state(card.state), "supported": card.supported,
            "model_id": card.model_id, "model_name": card.model_name, "serial": card.serial,
            "holder_label": card.holder_label, "blank": card.blank, "error": card.error}


def reader_dict(reader: pb.DeviceReader) -> dict:
    return {"name": reader.name, "card_present": reader.card_present,
            "card": card_dict(reader.card) if reader.card_present else None}


def event_dict(event: pb.DeviceEvent) -> dict:
    out = {"sequence": event.sequence,
           "kind": pb.DeviceEventKind.Name(event.kind).removeprefix("DEVICE_EVENT_KIND_").lower(),
           "time_unix_ms": event.time_unix_ms}
    if event.kind == pb.DEVICE_EVENT_KIND_SNAPSHOT:
        out["readers"] = [reader_dict(r) for r in event.snapshot]
        out["tokens"] = [token_dict(t) for t in event.tokens]
    elif event.HasField("token"):
        out["token"] = token_dict(event.token)
    elif event.HasField("approval"):
        out["approval"] = approval_dict(event.approval)
    else:
        out["reader"] = reader_dict(event.reader)
        out["interrupted"] = event.interrupted
    return out


def token_dict(token: pb.DeviceToken) -> dict:
    return {"serial": token.serial, "usb_id": token.usb_id, "mode": token.mode, "model_id": token.model_id,
            "model_name": token.model_name, "firmware": token.firmware, "bootloader": token.bootloader,
            "partitions": {name: {"version": p.version, "length": p.length, "sha256": p.sha256, "region": p.region}
                           for name, p in sorted(token.partitions.items())},
            "release": token.release, "chip_serial": token.chip_serial, "error": token.error,
            "reader": token.reader, "chip_holder": token.chip_holder}


def approval_dict(a: pb.PendingApproval) -> dict:
    """A token release waiting for the holder (``cns-agent update pending --token --json``, ``watch --json``)."""
    return {"serial": a.token_serial, "model": a.model_id, "release": a.release,
            "current_release": a.current_release or None, "size_bytes": a.size_bytes, "state": a.state,
            "offered_unix_ms": a.offered_unix_ms, "postponed_until_unix_ms": a.postponed_until_unix_ms or None}


def describe_approval(a: dict) -> str:
    now = f" (runs {a['current_release']})" if a.get("current_release") else ""
    text = f"token {a['serial']} ({a['model']}): release {a['release']}{now}, {a['size_bytes']} bytes, {a['state']}"
    if a["state"] == "waiting":
        text += f" — `cns-agent update approve --token --serial {a['serial']}` or `... decline ...`"
    elif a["state"] == "declined" and a.get("postponed_until_unix_ms"):
        text += " until " + time.strftime("%Y-%m-%d %H:%M", time.localtime(a["postponed_until_unix_ms"] / 1000))
    return text


def _client(args: argparse.Namespace) -> AgentClient:
    return AgentClient(socket_path(args))


PCSC_OK = "ok"
WATCH_RETRY_S = 1.0


def pcsc_notice(status: str) -> str:
    return (f"the agent cannot reach pcscd ({status}): start it (`sudo systemctl start pcscd.socket`, or "
            "`cns-emulator pcscd` for emulated cards); the agent reconnects by itself")


def devices(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            resp = client.devices()
            pcsc = client.info().pcsc_status
    except (AgentUnavailableError, AgentCallError) as exc:
        raise CommandError(str(exc)) from exc
    readers = [reader_dict(r) for r in resp.readers]
    tokens = [token_dict(t) for t in resp.tokens]
    if args.json:
        print(json.dumps({"sequence": resp.sequence, "readers": readers, "tokens": tokens, "pcsc": pcsc},
                         sort_keys=True))
        return 0
    if pcsc != PCSC_OK:
        print(pcsc_notice(pcsc))
    if not readers and pcsc == PCSC_OK:
        print("no readers: plug one in (the agent sees it at once)")
    for headers, rows in ((HEADERS, [_row(r) for r in readers]), (TOKEN_HEADERS, [_token_row(t) for t in tokens])):
        if not rows:
            continue
        if sys.stdout.isatty():
            _print_table(headers, rows)
        else:
            _print_plain(headers, rows)
    return 0


HEADERS = ("reader", "card", "model", "serial", "holder")


def _row(r: dict) -> tuple[str, ...]:
    card = r["card"]
    if card is None:
        return (r["name"], "no card", "", "", "")
    model = card["model_name"] or ("unsupported" if not card["supported"] else "")
    holder = "(blank card)" if card["blank"] else card["holder_label"]
    status = card["state"] + (f": {card['error']}" if card["error"] else "")
    return (r["name"], status, model, card["serial"], holder)


TOKEN_HEADERS = ("token", "model", "serial", "firmware", "partitions", "release", "chip")


def _token_row(t: dict) -> tuple[str, ...]:
    firmware = t["firmware"] + (" (bootloader: finish the firmware update)" if t["mode"] == "bootloader" else "")
    model = t["model_id"] or t["model_name"] + (" (not managed)" if t["mode"] == "foreign" else "")
    parts = " ".join(f"{k} {p['version']}" for k, p in t["partitions"].items())
    return ("USB " + t["usb_id"] + (f": {t['error']}" if t["error"] else ""), model, t["serial"], firmware,
            parts, t["release"] or "-", t["chip_serial"] + (f" ({t['chip_holder']})" if t.get("chip_holder") else ""))


def _print_plain(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Aligned columns without decoration or truncation: greppable, and every value whole."""
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    for row in [headers, *rows]:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip())


def _print_table(headers: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    serial = headers.index("serial")
    for name in headers:     # the serial is never cut: an operator reads it out or types it
        table.add_column(name, no_wrap=name == "serial", overflow="fold",
                         min_width=max((len(row[serial]) for row in rows), default=0) if name == "serial" else None)
    for row in rows:
        table.add_row(*row)
    Console().print(table)


def watch(args: argparse.Namespace) -> int:
    """Print events until Ctrl-C; when the agent goes away, say so and follow it when it comes back."""
    connected_once = False
    while True:
        try:
            with _client(args) as client:
                for event in client.watch():
                    if not connected_once:
                        connected_once = True
                    d = event_dict(event)
                    print(json.dumps(d, sort_keys=True) if args.json else _describe(d), flush=True)
        except AgentUnavailableError as exc:
            if not connected_once:
                raise CommandError(str(exc)) from exc
        except AgentCallError as exc:
            raise CommandError(str(exc)) from exc
        if not connected_once:
            return 0
        print(f"cns-agent watch: the agent on {socket_path(args)} went away; reconnecting when it is back "
              "(Ctrl-C to stop)", file=sys.stderr, flush=True)
        while not _agent_answers(args):
            time.sleep(WATCH_RETRY_S)


def _agent_answers(args: argparse.Namespace) -> bool:
    try:
        with _client(args) as client:
            client.info()
        return True
    except (AgentUnavailableError, AgentCallError):
        return False


def _describe(d: dict) -> str:
    if d["kind"] == "snapshot":
        return f"#{d['sequence']} snapshot: " + ", ".join(
            [f"{r['name']}={'card' if r['card_present'] else 'empty'}" for r in d["readers"]]
            + [f"USB token {t['serial'] or t['usb_id']}" for t in d.get("tokens", [])])
    if "approval" in d:
        return f"#{d['sequence']} {d['kind']} " + describe_approval(d["approval"])
    if "token" in d:
        t = d["token"]
        bits = [f"#{d['sequence']}", d["kind"], f"[USB {t['usb_id']}]"]
        for key in ("serial", "model_id", "mode", "firmware", "chip_serial", "chip_holder", "reader", "error"):
            if t.get(key):
                bits.append(f"{key}={t[key]}")
        bits += [f"{name}={p['version']}" for name, p in t["partitions"].items()]
        return " ".join(bits)
    r = d["reader"]
    card = r["card"] or {}
    bits = [f"#{d['sequence']}", d["kind"], f"[{r['name']}]"]
    for key in ("state", "model_id", "serial", "holder_label", "error"):
        if card.get(key):
            bits.append(f"{key}={card[key]}")
    if d.get("interrupted"):
        bits.append("(pulled while being read)")
    return " ".join(bits)


def info(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            i = client.info()
    except (AgentUnavailableError, AgentCallError) as exc:
        raise CommandError(str(exc)) from exc
    print(json.dumps({"version": i.version, "pid": i.pid, "uid": i.uid, "socket": i.socket_path,
                      "pcsc": i.pcsc_status, "models": list(i.model_ids), "profiles_dir": i.profiles_dir},
                     sort_keys=True))
    sys.stdout.flush()
    return 0
