"""Token models: the schema of ``firmware_profiles/tokens/*.toml`` (SCHEMA.md §Token models)
and its validation at load.

A token model says how a composite CNS token presents itself on USB (ids in runtime and DFU
bootloader mode, the reader kind, link speed), its flash layout (CD-ROM, removable disk, and
the reserved area holding the A/B slots partition updates are staged in), the chip (a card
model id from ``cards/``) and the firmware rules (minimum bootloader, downgrades).

Imports ``firmware_profiles.model`` only (for ``ProfileError`` and the typed TOML reader).
"""
from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from firmware_profiles.model import CARDS_DIR, ProfileError, _Reader, load_models

SCHEMA_VERSION = 1
TOKENS_DIR = Path(__file__).resolve().parent.parent / "tokens"
READERS = ("ccid", "hid")
# bits per second of the USB link (full speed 12 Mbit/s, high speed 480 Mbit/s): the signalling rate;
# what a transfer costs on it is the model's ``[link]`` table (``LinkModel``, SCHEMA.md §9)
LINK_SPEEDS = {"full": 12_000_000, "high": 480_000_000}
# USB 2.0 spec chapter 5, per speed: the (micro)frame, the bytes one carries at the signalling rate, the
# default endpoint's and a bulk endpoint's allowed wMaxPacketSize (§5.5.3, §5.8.3), and the protocol overhead
# of one control transfer and of one bulk transaction that Tables 5-2/5-3 (control) and 5-9/5-10 (bulk) count
_FRAME = {"full": (1000, 1500, (8, 16, 32, 64), (8, 16, 32, 64), 45, 13),
          "high": (125, 7500, (64,), (512,), 173, 55)}
MIB = 1 << 20
META_BYTES = 1 * MIB        # flash head: two metadata copies + firmware header, never a partition
RESERVED_FOR_APPS = 100 * 1000 * 1000  # tender: ≥ 100 MB reserved for future applications
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_VERSION_RE = re.compile(r"^(\d{1,3})\.(\d{1,3})\.(\d{1,3})$")


def parse_version(text: str) -> tuple[int, int, int]:
    """``"1.2.3"`` → (1, 2, 3). Raises ValueError for anything else."""
    m = _VERSION_RE.match(text or "")
    if not m:
        raise ValueError(f"a version like 1.2.3, got {text!r}")
    return tuple(int(x) for x in m.groups())  # type: ignore[return-value]


def bcd_device(version: str) -> int:
    """The bcdDevice a version is reported in (fwupd reads the version there): major.minor.patch → 0xMMmp."""
    ma, mi, pa = parse_version(version)
    if ma > 99 or mi > 9 or pa > 9:
        raise ValueError(f"version {version} does not fit bcdDevice (major ≤ 99, minor and patch ≤ 9)")
    return (ma // 10) << 12 | (ma % 10) << 8 | mi << 4 | pa


def version_from_bcd(bcd: int) -> str:
    return f"{(bcd >> 12) * 10 + ((bcd >> 8) & 0xF)}.{(bcd >> 4) & 0xF}.{bcd & 0xF}"


@dataclass(frozen=True)
class UsbIds:
    vendor_id: int
    runtime_product_id: int
    bootloader_product_id: int
    manufacturer: str
    product: str


@dataclass(frozen=True)
class FlashLayout:
    """Byte offsets on the token's flash. Order: metadata, CD-ROM, disk, reserved (slot A, slot B, apps)."""

    size_bytes: int
    block_bytes: int
    cdrom_bytes: int
    disk_bytes: int
    reserved_bytes: int
    slot_bytes: int

    @property
    def cdrom_offset(self) -> int:
        return META_BYTES

    @property
    def disk_offset(self) -> int:
        return META_BYTES + self.cdrom_bytes

    @property
    def reserved_offset(self) -> int:
        return self.disk_offset + self.disk_bytes

    def region(self, name: str) -> tuple[int, int]:
        """(offset, length) of a region: "cdrom", "disk" (the factory homes) or slot "A" / "B"."""
        return {
            "cdrom": (self.cdrom_offset, self.cdrom_bytes),
            "disk": (self.disk_offset, self.disk_bytes),
            "A": (self.reserved_offset, self.slot_bytes),
            "B": (self.reserved_offset + self.slot_bytes, self.slot_bytes),
        }[name]


@dataclass(frozen=True)
class LinkModel:
    """What a transfer costs on the token's USB link, by transfer type (SCHEMA.md §9; USB 2.0 chapter 5).

    A transfer starts on a (micro)frame boundary and takes whole frames: a control transfer (setup, data
    stage in ``control_packet_bytes`` packets, status) at least ``control_min_frames`` (in practice a host
    completes one control transfer per frame), its data stage at most ``control_packets_per_frame`` packets
    a frame; a bulk transfer ``bulk_packets_per_frame`` packets of ``bulk_packet_bytes`` a frame, plus
    ``bulk_transfer_overhead_us`` per transfer (the host sees a completion at a frame's end and submits the
    next after it). The raw link rate is the bulk ceiling: full frames of full packets, no overhead.
    """

    frame_us: int
    control_packet_bytes: int
    control_packets_per_frame: int
    control_min_frames: int
    bulk_packet_bytes: int
    bulk_packets_per_frame: int
    bulk_transfer_overhead_us: int

    def control_seconds(self, nbytes: int) -> float:
        packets = -(-nbytes // self.control_packet_bytes)
        frames = max(self.control_min_frames, -(-packets // self.control_packets_per_frame))
        return frames * self.frame_us / 1e6

    def bulk_seconds(self, nbytes: int) -> float:
        packets = max(1, -(-nbytes // self.bulk_packet_bytes))
        return (self.bulk_transfer_overhead_us + -(-packets // self.bulk_packets_per_frame) * self.frame_us) / 1e6

    def interrupt_seconds(self, nbytes: int, max_packet: int) -> float:
        """One transaction of up to ``max_packet`` bytes per frame (an endpoint polled every frame)."""
        return max(1, -(-nbytes // max_packet)) * self.frame_us / 1e6

    @property
    def raw_bytes_per_second(self) -> float:
        """The link's payload ceiling: bulk packets filling every frame (high speed: 53,248,000 B/s)."""
        return self.bulk_packet_bytes * self.bulk_packets_per_frame * 1e6 / self.frame_us


@dataclass(frozen=True)
class FirmwareRules:
    version: str          # factory firmware
    bootloader: str       # factory bootloader
    min_bootloader: str   # firmware images for this model need at least this bootloader
    allow_downgrade: bool  # and then only with an image that says so
    signing_public_key: bytes  # Ed25519 (raw 32 bytes) that signs firmware and partition images


@dataclass(frozen=True)
class TokenModel:
    id: str
    name: str
    source: str
    reader: str  # "ccid" | "hid"
    chip: str    # card model id
    serial_prefix: str
    link_speed: str
    usb: UsbIds
    flash: FlashLayout
    firmware: FirmwareRules
    link: LinkModel
    description: str = ""

    @property
    def link_bits_per_second(self) -> int:
        return LINK_SPEEDS[self.link_speed]


def load_token_model(path: str | Path, *, card_ids: set[str] | None = None) -> TokenModel:
    """Load and validate one token model file; ``card_ids``: the card models its chip may name."""
    p = Path(path)
    shown = _shown(p)
    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ProfileError(shown, "(file)", "an existing TOML file", has_got=False) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(shown, "(file)", f"a readable UTF-8 file ({exc})", has_got=False) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(shown, "(file)", f"valid TOML ({exc})", has_got=False) from exc
    if card_ids is None:
        card_ids = set(load_models(CARDS_DIR))
    return _build(shown, raw, card_ids)


def _shown(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(TOKENS_DIR.parent))
    except ValueError:
        return str(p)


def _version(r: _Reader, name: str) -> str:
    v = r.str(name, expected="a version like 1.2.3 (major ≤ 99, minor and patch ≤ 9)")
    try:
        bcd_device(v)
    except ValueError:
        raise r.err(name, "a version like 1.2.3 (major ≤ 99, minor and patch ≤ 9)", v) from None
    return v


def _key(r: _Reader, name: str) -> bytes:
    v = r.str(name, expected="an Ed25519 public key as 64 hex digits")
    try:
        raw = bytes.fromhex(v)
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise r.err(name, "an Ed25519 public key as 64 hex digits", v)
    return raw


def _link(r: _Reader, speed: str) -> LinkModel:
    frame, frame_bytes, control_sizes, bulk_sizes, control_over, bulk_over = _FRAME[speed]
    what = {"full": "a full-speed frame", "high": "a high-speed microframe"}[speed]
    r.int("frame_us", frame, frame, expected=f"{frame} (the length of {what}, USB 2.0 §8.4.3)")
    sizes = lambda xs: ", ".join(map(str, xs))  # noqa: E731
    cpb = r.int("control_packet_bytes", 8, 64, expected=f"the default endpoint's packet size at {speed} speed "
                f"({sizes(control_sizes)}: USB 2.0 §5.5.3)")
    if cpb not in control_sizes:
        raise r.err("control_packet_bytes", f"{sizes(control_sizes)} at {speed} speed (USB 2.0 §5.5.3)", cpb)
    cmax = frame_bytes // (cpb + control_over)
    cpf = r.int("control_packets_per_frame", 1, cmax, expected=f"1..{cmax}: control transfers of {cpb} bytes that "
                f"fit {what} with their {control_over}-byte overhead (USB 2.0 Table 5-{2 if speed == 'full' else 3})")
    cmin = r.int("control_min_frames", 1, 8, expected="1..8 frames a control transfer takes at least")
    bpb = r.int("bulk_packet_bytes", 8, 512, expected=f"a bulk packet size at {speed} speed ({sizes(bulk_sizes)}: "
                "USB 2.0 §5.8.3)")
    if bpb not in bulk_sizes:
        raise r.err("bulk_packet_bytes", f"{sizes(bulk_sizes)} at {speed} speed (USB 2.0 §5.8.3)", bpb)
    bmax = frame_bytes // (bpb + bulk_over)
    bpf = r.int("bulk_packets_per_frame", 1, bmax, expected=f"1..{bmax}: bulk packets of {bpb} bytes that fit {what} "
                f"with their {bulk_over}-byte overhead (USB 2.0 Table 5-{9 if speed == 'full' else 10})")
    over = r.int("bulk_transfer_overhead_us", 0, 100_000, expected="microseconds 0..100000 a bulk transfer costs "
                 "beyond its packets (completion and resubmission)")
    return LinkModel(frame, cpb, cpf, cmin, bpb, bpf, over)


def _build(path: str, raw: Mapping[str, Any], card_ids: set[str]) -> TokenModel:
    r = _Reader(path, raw)
    r.int("schema", SCHEMA_VERSION, SCHEMA_VERSION, expected=f"schema version {SCHEMA_VERSION}")
    mid = r.str("id", pattern=_ID_RE, expected="a lower-case id of letters, digits and dashes")
    reader = r.choice("reader", READERS)
    chip = r.str("chip", expected="the id of a card model in cards/")
    if chip not in card_ids:
        raise r.err("chip", "the id of a card model in cards/ (" + ", ".join(sorted(card_ids)) + ")", chip)
    link = r.choice("link_speed", tuple(LINK_SPEEDS))

    u = r.table_("usb")
    ids = UsbIds(
        vendor_id=u.int("vendor_id", 1, 0xFFFF, expected="a USB vendor id 0x0001..0xFFFF"),
        runtime_product_id=u.int("runtime_product_id", 0, 0xFFFF, expected="a USB product id 0x0000..0xFFFF"),
        bootloader_product_id=u.int("bootloader_product_id", 0, 0xFFFF,
                                    expected="a USB product id 0x0000..0xFFFF"),
        manufacturer=u.str("manufacturer"), product=u.str("product"))
    if ids.bootloader_product_id == ids.runtime_product_id:
        raise u.err("bootloader_product_id", "a product id other than runtime_product_id (fwupd tells the modes "
                    "apart by it, and a token stuck in its bootloader is found by it)", ids.bootloader_product_id)
    for k in ("manufacturer", "product"):
        if len(getattr(ids, k)) > 126:
            raise u.err(k, "at most 126 characters (one USB string descriptor)", getattr(ids, k))

    f = r.table_("flash")
    size = f.int("size_mib", 64, 65536, expected="flash size in MiB, 64..65536") * MIB
    block = f.int("block_bytes", 512, 65536, expected="a block size of 512..65536 bytes, a multiple of 2048")
    if block % 2048:
        raise f.err("block_bytes", "a multiple of 2048 (one CD-ROM sector)", block)

    pt = r.table_("partitions")
    cd, disk, res, slot = (pt.int(k, 1, 65536, expected="a size in MiB, 1..65536") * MIB
                           for k in ("cdrom_mib", "disk_mib", "reserved_mib", "slot_mib"))
    if META_BYTES + cd + disk + res > size:
        raise pt.err("reserved_mib", f"partitions that fit the flash: 1 MiB metadata + cdrom + disk + reserved ≤ "
                     f"{size // MIB} MiB", res // MIB)
    if res - 2 * slot < RESERVED_FOR_APPS:
        raise pt.err("slot_mib", "two A/B slots that leave ≥ 100 MB of the reserved area for future applications",
                     slot // MIB)
    if slot < max(cd, disk):
        raise pt.err("slot_mib", f"slots at least as large as the CD-ROM and the disk ({max(cd, disk) // MIB} MiB) "
                     "so either image fits", slot // MIB)

    link_model = _link(r.table_("link"), link)

    fw = r.table_("firmware")
    rules = FirmwareRules(version=_version(fw, "version"), bootloader=_version(fw, "bootloader"),
                          min_bootloader=_version(fw, "min_bootloader"),
                          allow_downgrade=fw.bool("allow_downgrade"),
                          signing_public_key=_key(fw, "signing_public_key"))
    if parse_version(rules.bootloader) < parse_version(rules.min_bootloader):
        raise fw.err("bootloader", f"at least min_bootloader ({rules.min_bootloader})", rules.bootloader)

    return TokenModel(
        id=mid, name=r.str("name"), source=path, reader=reader, chip=chip,
        serial_prefix=r.str("serial_prefix", pattern=re.compile(r"^[A-Z0-9]{1,8}$"),
                            expected="1 to 8 upper-case letters or digits"),
        link_speed=link, usb=ids,
        flash=FlashLayout(size, block, cd, disk, res, slot), firmware=rules, link=link_model,
        description=r.str("description", ""))


def load_token_models(directory: str | Path | None = None) -> dict[str, TokenModel]:
    """All ``*.toml`` token models in ``directory`` (default: the packaged ``tokens/``), by id."""
    d = Path(directory) if directory is not None else TOKENS_DIR
    if not d.is_dir():
        raise ProfileError(str(d), "(directory)", "a folder of token model TOML files", has_got=False)
    card_ids = set(load_models(CARDS_DIR))
    models: dict[str, TokenModel] = {}
    usb_ids: dict[tuple[int, int], str] = {}
    for f in sorted(d.glob("*.toml")):
        m = load_token_model(f, card_ids=card_ids)
        if m.id in models:
            raise ProfileError(_shown(f), "id", f"an id no other model uses ({models[m.id].source} has it)", m.id)
        for key, pid in (("runtime_product_id", m.usb.runtime_product_id),
                         ("bootloader_product_id", m.usb.bootloader_product_id)):
            other = usb_ids.get((m.usb.vendor_id, pid))
            if other:
                raise ProfileError(m.source, f"usb.{key}", f"a vendor/product id no other model uses "
                                   f"({other} has {m.usb.vendor_id:04X}:{pid:04X})", f"{pid:#06x}")
            usb_ids[(m.usb.vendor_id, pid)] = m.id
        models[m.id] = m
    return models
