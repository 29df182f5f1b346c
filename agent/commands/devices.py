"""``cns-agent devices`` and ``cns-agent watch``: ask the running agent what it sees."""
from __future__ import annotations

import argparse
import json
import sys

from agent.api.client import AgentCallError, AgentClient, AgentUnavailableError
from agent.commands import CommandError, add_socket_option, socket_path
from proto.cns.v1 import agent_pb2 as pb


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("devices", help="list readers and cards seen by the running agent")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_socket_option(p)
    p.set_defaults(func=devices)
    w = sub.add_parser("watch", help="print device events as they happen (Ctrl-C to stop)")
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    add_socket_option(w)
    w.set_defaults(func=watch)
    i = sub.add_parser("info", help="show the running agent's version, socket and PC/SC status")
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
    else:
        out["reader"] = reader_dict(event.reader)
        out["interrupted"] = event.interrupted
    return out


def _client(args: argparse.Namespace) -> AgentClient:
    return AgentClient(socket_path(args))


def devices(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            resp = client.devices()
    except (AgentUnavailableError, AgentCallError) as exc:
        raise CommandError(str(exc)) from exc
    readers = [reader_dict(r) for r in resp.readers]
    if args.json:
        print(json.dumps({"sequence": resp.sequence, "readers": readers}, sort_keys=True))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("reader", "card", "model", "serial", "holder")
    for r in readers:
        card = r["card"]
        if card is None:
            table.add_row(r["name"], "—", "", "", "")
            continue
        model = card["model_name"] or ("unsupported" if not card["supported"] else "")
        holder = "(blank card)" if card["blank"] else card["holder_label"]
        status = card["state"] + (f": {card['error']}" if card["error"] else "")
        table.add_row(r["name"], status, model, card["serial"], holder)
    if not readers:
        print("no readers")
        return 0
    Console().print(table)
    return 0


def watch(args: argparse.Namespace) -> int:
    try:
        with _client(args) as client:
            for event in client.watch():
                d = event_dict(event)
                print(json.dumps(d, sort_keys=True) if args.json else _describe(d), flush=True)
    except (AgentUnavailableError, AgentCallError) as exc:
        raise CommandError(str(exc)) from exc
    return 0


def _describe(d: dict) -> str:
    if d["kind"] == "snapshot":
        return f"#{d['sequence']} snapshot: " + ", ".join(
            f"{r['name']}={'card' if r['card_present'] else 'empty'}" for r in d["readers"])
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
