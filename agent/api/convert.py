"""Registry views and USB token rows (``UsbBackend.snapshot()`` dicts) → ``proto.cns.v1.agent_pb2`` messages. Pure."""
from __future__ import annotations

from agent.devices.registry import CardState, CardView, DeviceEvent, EventKind, ReaderView
from proto.cns.v1 import agent_pb2 as pb

_STATE = {
    CardState.READING: pb.DEVICE_CARD_STATE_READING,
    CardState.READY: pb.DEVICE_CARD_STATE_READY,
    CardState.UNSUPPORTED: pb.DEVICE_CARD_STATE_UNSUPPORTED,
    CardState.ERROR: pb.DEVICE_CARD_STATE_ERROR,
}
_KIND = {
    EventKind.READER_ADDED: pb.DEVICE_EVENT_KIND_READER_ADDED,
    EventKind.READER_REMOVED: pb.DEVICE_EVENT_KIND_READER_REMOVED,
    EventKind.CARD_INSERTED: pb.DEVICE_EVENT_KIND_CARD_INSERTED,
    EventKind.CARD_READ: pb.DEVICE_EVENT_KIND_CARD_READ,
    EventKind.CARD_REMOVED: pb.DEVICE_EVENT_KIND_CARD_REMOVED,
    EventKind.CARD_ERROR: pb.DEVICE_EVENT_KIND_CARD_ERROR,
}


def card_pb(card: CardView) -> pb.DeviceCard:
    return pb.DeviceCard(atr_hex=card.atr.hex().upper(), state=_STATE[card.state], supported=card.supported,
                         model_id=card.model_id, model_name=card.model_name, serial=card.serial,
                         holder_label=card.holder_label, blank=card.blank, error=card.error)


def reader_pb(reader: ReaderView) -> pb.DeviceReader:
    msg = pb.DeviceReader(name=reader.name, card_present=reader.card is not None)
    if reader.card is not None:
        msg.card.CopyFrom(card_pb(reader.card))
    return msg


def event_pb(event: DeviceEvent) -> pb.DeviceEvent:
    return pb.DeviceEvent(sequence=event.sequence, kind=_KIND[event.kind], reader_name=event.reader.name,
                          reader=reader_pb(event.reader), interrupted=event.interrupted,
                          time_unix_ms=event.time_unix_ms)


def token_pb(row: dict) -> pb.DeviceToken:
    """One row of ``UsbBackend.snapshot()`` (``TokenInfo.as_dict``)."""
    parts = {name: pb.TokenPartition(version=str(p.get("version", "")), length=int(p.get("length", 0) or 0),
                                     sha256=str(p.get("sha256", "")), region=str(p.get("region", "")))
             for name, p in (row.get("partitions") or {}).items()}
    return pb.DeviceToken(serial=row["serial"], usb_id=row["usb_id"], mode=row["mode"], model_id=row["model"],
                          model_name=row["model_name"], firmware=row["firmware"], bootloader=row["bootloader"],
                          partitions=parts, release=row.get("release") or "", chip_serial=row["chip_serial"],
                          error=row["error"], reader=row.get("reader") or "", chip_holder=row.get("chip_holder") or "")


TOKEN_EVENT_KIND = {"arrived": pb.DEVICE_EVENT_KIND_TOKEN_ARRIVED, "left": pb.DEVICE_EVENT_KIND_TOKEN_LEFT,
                    "changed": pb.DEVICE_EVENT_KIND_TOKEN_CHANGED}


def token_event_pb(kind: str, row: dict, *, sequence: int, time_unix_ms: int) -> pb.DeviceEvent:
    """A token event (``UsbBackend`` listener kind and row) as a watch message."""
    return pb.DeviceEvent(sequence=sequence, kind=TOKEN_EVENT_KIND[kind], token=token_pb(row),
                          time_unix_ms=time_unix_ms)
