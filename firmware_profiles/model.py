"""Card models as data: TOML files in ``cards/`` → typed, frozen ``CardModel``.

Owns: the schema of a card model (documented in SCHEMA.md), its validation at
load, ATR parsing (TCK, CNS historical bytes) and ATR → model identification.
Every problem is a ``ProfileError`` naming the file, the key and what was
expected.

Must not import anything of ours (agent, personalizer, proto, the emulator).

Exceptions::

    ProfileError(Exception)      .path .key .expected
"""
from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from firmware_profiles import admin_keys

SCHEMA_VERSION = 1
CARDS_DIR = Path(__file__).resolve().parent / "cards"

PIN_MODES = ("preset", "set_at_personalization")
DIALECTS = ("cns-iso-v1",)
TIMING_NAMES = ("zero", "realistic")
RSA_SIZES = (1024, 2048)
CNS_VERSION_BITS = {0x10: 1024, 0x11: 2048}  # ATR H13 → key size OpenSC 0.23 assumes
FILE_KINDS = ("MF", "DF", "EF")
_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_PATH_RE = re.compile(r"^3F00(/[0-9A-F]{4})*$")


class ProfileError(Exception):
    """A card model file is missing, unreadable or breaks the schema."""

    def __init__(self, path: str | Path, key: str, expected: str, got: Any = None, *, has_got: bool = True):
        self.path = str(path)
        self.key = key
        self.expected = expected
        self.got = got
        msg = f"{self.path}: {key}: expected {expected}"
        if has_got:
            msg += f", got {got!r}" if not isinstance(got, str) else f', got "{got}"'
        super().__init__(msg)


# --------------------------------------------------------------------------- types


@dataclass(frozen=True)
class AccessRule:
    """Who may perform one operation: ``always``, ``never``, ``admin`` or ``chv:XX`` (PIN ref XX, hex)."""

    kind: str  # "always" | "never" | "admin" | "chv"
    ref: int | None = None

    def __str__(self) -> str:
        return f"chv:{self.ref:02X}" if self.kind == "chv" else self.kind

    @property
    def sec_attr_byte(self) -> int:
        """Encoding in the FCP security attributes (tag 86), as OpenSC's itacns driver reads them."""
        return {"always": 0x00, "never": 0xFF, "admin": 0x40}.get(self.kind, self.ref or 0)

    @classmethod
    def from_byte(cls, b: int) -> "AccessRule":
        if b == 0x00:
            return cls("always")
        if b == 0x40:
            return cls("admin")
        if 0x01 <= b <= 0x1F:
            return cls("chv", b)
        return cls("never")


@dataclass(frozen=True)
class FileSpec:
    """One file a blank card has from the factory."""

    path: str  # "3F00/1000/1003"
    kind: str  # MF | DF | EF
    label: str
    size: int  # EF bytes; 0 for DFs
    read: AccessRule
    update: AccessRule
    delete: AccessRule
    create: AccessRule  # DFs: who may CREATE FILE under it
    content: str  # "zero" | "serial" | hex bytes

    @property
    def fid(self) -> int:
        return int(self.path.rsplit("/", 1)[-1], 16)


@dataclass(frozen=True)
class Keyset:
    """A CNS keyset (CNS0 authentication, CNS1 signature) with its renewal spare."""

    name: str
    label: str
    df: str  # DF holding the certificate
    pin_df: str | None  # DF OpenSC selects before VERIFY and PSO (None: none)
    key_ref: int  # live key, also the MSE SET security environment OpenSC uses
    spare_key_ref: int  # renewal slot
    cert_path: str
    spare_cert_path: str
    pin_ref: int
    puk_ref: int
    pin_tries: int
    puk_tries: int
    usage: tuple[str, ...]  # "sign", "decipher"

    @property
    def key_refs(self) -> tuple[int, int]:
        return (self.key_ref, self.spare_key_ref)


@dataclass(frozen=True)
class PinPolicy:
    min_length: int
    max_length: int
    digits_only: bool
    pin_tries: int
    puk_tries: int
    pad_byte: int
    factory_test_pin: str | None  # pin_mode "preset": the sealed codes of every TEST card
    factory_test_puk: str | None


@dataclass(frozen=True)
class Eeprom:
    total_bytes: int
    system_reserved_bytes: int  # OS, MF and factory objects not modelled as files
    ef_header_bytes: int
    df_header_bytes: int
    pin_object_bytes: int
    key_slot_bytes: Mapping[int, int]  # RSA bits → bytes a populated key slot costs


@dataclass(frozen=True)
class Timing:
    """Seconds the card takes; ``zero`` for tests, ``realistic`` for demos."""

    name: str
    apdu_seconds: float
    keygen_seconds: Mapping[int, float]
    sign_seconds: Mapping[int, float]
    write_seconds_per_byte: float


@dataclass(frozen=True)
class Dialect:
    """The personalization dialect's parameters (SCHEMA.md §Dialect)."""

    name: str
    admin_key_ref: int
    admin_algorithm: str  # "AES-128"
    admin_key_scheme: str  # how a card's key is diversified from a master key (firmware_profiles.admin_keys)
    admin_test_master_key: bytes  # the EMULATED cards' TEST master key; real masters stay in the personalizer's token
    admin_tries: int
    challenge_bytes: int
    cla_proprietary: int
    ins_switch_keyset: int
    ins_erase_key: int
    ins_get_info: int
    ins_put_key: int            # PUT KEY: the issuer key replaced (the transport key at first use)
    transport_test_key: bytes   # the TEST transport key of emulated blank cards that arrive keyed with one


@dataclass(frozen=True)
class CardPaths:
    id_carta: str
    dati_personali: str
    renewal_marker: str | None


@dataclass(frozen=True)
class CardModel:
    id: str
    name: str
    source: str
    atr: bytes
    rsa_bits: int
    algorithms: tuple[str, ...]
    pin_mode: str
    serial_prefix: str
    pin_policy: PinPolicy
    eeprom: Eeprom
    keysets: tuple[Keyset, ...]
    files: tuple[FileSpec, ...]
    paths: CardPaths
    timing: Mapping[str, Timing]
    dialect: Dialect
    description: str = ""
    ic_manufacturer: int = 0
    mask_manufacturer: int = 0
    cns_version: int = 0
    _by_ref: Mapping[int, Keyset] = field(default_factory=dict, repr=False, compare=False)

    @property
    def eeprom_bytes(self) -> int:
        return self.eeprom.total_bytes

    def keyset(self, name: str) -> Keyset:
        for ks in self.keysets:
            if ks.name == name:
                return ks
        raise KeyError(name)

    def keyset_for_key(self, key_ref: int) -> Keyset | None:
        return self._by_ref.get(key_ref)

    def keyset_for_pin(self, ref: int) -> Keyset | None:
        for ks in self.keysets:
            if ref in (ks.pin_ref, ks.puk_ref):
                return ks
        return None

    @property
    def key_refs(self) -> tuple[int, ...]:
        return tuple(r for ks in self.keysets for r in ks.key_refs)


# --------------------------------------------------------------------------- ATR


def parse_hex(text: str) -> bytes:
    cleaned = re.sub(r"[\s:]", "", text)
    return bytes.fromhex(cleaned)


@dataclass(frozen=True)
class AtrInfo:
    historical: bytes
    has_tck: bool
    tck_ok: bool


def parse_atr(atr: bytes) -> AtrInfo:
    """Split an ATR (ISO 7816-3) into its historical bytes and check TCK. Raises ValueError."""
    if len(atr) < 2 or atr[0] not in (0x3B, 0x3F):
        raise ValueError("TS must be 3B or 3F")
    t0 = atr[1]
    k = t0 & 0x0F
    i, y, protocols = 2, t0 >> 4, set()
    while True:
        for bit in (1, 2, 4):  # TA, TB, TC
            if y & bit:
                i += 1
        if y & 8:  # TD
            if i >= len(atr):
                raise ValueError("ATR shorter than its interface bytes say")
            td = atr[i]
            i += 1
            protocols.add(td & 0x0F)
            y = td >> 4
        else:
            break
    if i + k > len(atr):
        raise ValueError("ATR shorter than its historical bytes say")
    hist = atr[i:i + k]
    has_tck = bool(protocols - {0})
    rest = atr[i + k:]
    if has_tck:
        if len(rest) != 1:
            raise ValueError("missing TCK (T=1 is offered, so the ATR must end with TCK)")
        x = 0
        for b in atr[1:]:
            x ^= b
        return AtrInfo(hist, True, x == 0)
    if rest:
        raise ValueError("trailing bytes after the historical bytes")
    return AtrInfo(hist, False, True)


def tck(atr_without_tck: bytes) -> int:
    x = 0
    for b in atr_without_tck[1:]:
        x ^= b
    return x


# --------------------------------------------------------------------------- loader


class _Reader:
    """Typed getters over one TOML table that raise ProfileError with the dotted key."""

    def __init__(self, path: str, table: Mapping[str, Any], prefix: str = ""):
        self.path, self.table, self.prefix = path, table, prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def err(self, name: str, expected: str, got: Any = None, *, has_got: bool = True) -> ProfileError:
        return ProfileError(self.path, self.key(name), expected, got, has_got=has_got)

    def raw(self, name: str, default: Any = ..., expected: str = "a value") -> Any:
        if name not in self.table:
            if default is ...:
                raise self.err(name, expected + " (missing)", has_got=False)
            return default
        return self.table[name]

    def str(self, name: str, default: Any = ..., *, pattern: re.Pattern | None = None, expected: str = "a string") -> Any:
        v = self.raw(name, default, expected)
        if v is default and default is not ...:
            return v
        if not isinstance(v, str) or not v or (pattern and not pattern.match(v)):
            raise self.err(name, expected, v)
        return v

    def int(self, name: str, lo: int, hi: int, default: Any = ..., *, expected: str | None = None) -> Any:
        exp = expected or f"an integer {lo}..{hi}"
        v = self.raw(name, default, exp)
        if v is default and default is not ...:
            return v
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise self.err(name, exp, v)
        return v

    def ref(self, name: str, default: Any = ...) -> Any:
        """A one-byte reference written as an integer (0x10) or a hex string ("10")."""
        v = self.raw(name, default, "a reference byte 0x01..0xFF")
        if v is default and default is not ...:
            return v
        if isinstance(v, str):
            try:
                v2 = int(v, 16)
            except ValueError:
                raise self.err(name, "a reference byte 0x01..0xFF", v) from None
        else:
            v2 = v
        if isinstance(v2, bool) or not isinstance(v2, int) or not 1 <= v2 <= 0xFF:
            raise self.err(name, "a reference byte 0x01..0xFF", v)
        return v2

    def float(self, name: str, lo: float, hi: float, default: Any = ...) -> Any:
        exp = f"a number of seconds {lo}..{hi}"
        v = self.raw(name, default, exp)
        if v is default and default is not ...:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise self.err(name, exp, v)
        return float(v)

    def bool(self, name: str, default: Any = ...) -> Any:
        v = self.raw(name, default, "true or false")
        if not isinstance(v, bool):
            raise self.err(name, "true or false", v)
        return v

    def choice(self, name: str, choices: tuple[str, ...], default: Any = ...) -> Any:
        exp = "one of " + ", ".join(f'"{c}"' for c in choices)
        v = self.raw(name, default, exp)
        if v not in choices:
            raise self.err(name, exp, v)
        return v

    def table_(self, name: str, default: Any = ...) -> "_Reader":
        v = self.raw(name, default, "a table")
        if v is default and default is not ...:
            v = {}
        if not isinstance(v, Mapping):
            raise self.err(name, "a table", v)
        return _Reader(self.path, v, self.key(name) + ".")

    def tables(self, name: str) -> list["_Reader"]:
        v = self.raw(name, ..., "an array of tables")
        if not isinstance(v, list) or not v or not all(isinstance(t, Mapping) for t in v):
            raise self.err(name, "a non-empty array of tables", v)
        return [_Reader(self.path, t, f"{self.key(name)}[{i}].") for i, t in enumerate(v)]

    def path_(self, name: str, default: Any = ...) -> Any:
        v = self.raw(name, default, 'a file path like "3F00/1000/1003"')
        if v is default and default is not ...:
            return v
        if not isinstance(v, str) or not _PATH_RE.match(v.upper()):
            raise self.err(name, 'a file path like "3F00/1000/1003" (4 hex digits per level, from 3F00)', v)
        return v.upper()

    def rule(self, name: str, default: str) -> AccessRule:
        v = self.raw(name, default)
        exp = '"always", "never", "admin" or "chv:XX" (XX a PIN reference in hex)'
        if not isinstance(v, str):
            raise self.err(name, exp, v)
        if v in ("always", "never", "admin"):
            return AccessRule(v)
        m = re.match(r"^chv:([0-9A-Fa-f]{2})$", v)
        if not m or not 0x01 <= int(m.group(1), 16) <= 0x1F:
            raise self.err(name, exp + " with XX 01..1F", v)
        return AccessRule("chv", int(m.group(1), 16))

    def bits_map(self, name: str, lo: float, hi: float, *, integer: bool = False) -> dict[int, Any]:
        t = self.table_(name)
        out: dict[int, Any] = {}
        for k in t.table:
            if k not in ("1024", "2048"):
                raise t.err(k, 'RSA sizes "1024" or "2048" as keys', k)
            out[int(k)] = t.int(k, int(lo), int(hi)) if integer else t.float(k, lo, hi)
        for bits in RSA_SIZES:
            if bits not in out:
                raise t.err(str(bits), "a value for this RSA size (missing)", has_got=False)
        return out


def _aes_key(dl, name: str) -> bytes:
    key_hex = dl.str(name, expected="16 bytes of hex (AES-128)")
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        key = b""
    if len(key) != 16:
        raise dl.err(name, "16 bytes of hex (AES-128)", key_hex)
    return key


def load_model(path: str | Path) -> CardModel:
    """Load and validate one card model file."""
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
    return _build(shown, raw)


def _shown(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(CARDS_DIR.parent))
    except ValueError:
        return str(p)


def _build(path: str, raw: Mapping[str, Any]) -> CardModel:
    r = _Reader(path, raw)
    r.int("schema", SCHEMA_VERSION, SCHEMA_VERSION, expected=f"schema version {SCHEMA_VERSION}")
    mid = r.str("id", pattern=_ID_RE, expected="a lower-case id of letters, digits and dashes")
    name = r.str("name")
    rsa_bits = r.int("rsa_bits", 1024, 2048, expected="1024 or 2048")
    if rsa_bits not in RSA_SIZES:
        raise r.err("rsa_bits", "1024 or 2048", rsa_bits)
    atr_text = r.str("atr", expected="the ATR as hex bytes")
    try:
        atr = parse_hex(atr_text)
        info = parse_atr(atr)
    except ValueError as exc:
        raise r.err("atr", f"a well-formed ATR ({exc})", atr_text) from None
    if not info.tck_ok:
        raise r.err("atr", f"a correct TCK (it should be {tck(atr[:-1]):02X})", atr_text)
    h = info.historical
    if len(h) != 15 or h[0] != 0x00 or h[1] != 0x6B or h[6] != 0x01 or h[9:12] != b"CNS" or h[13:15] != b"\x31\x80":
        raise r.err("atr", "CNS historical bytes: 00 6B IC mask OSv OSv 01 xx xx 'CNS' version 31 80", atr_text)
    version = h[12]
    if CNS_VERSION_BITS.get(version) != rsa_bits:
        raise r.err("atr", f"CNS version byte 10 for RSA-1024 or 11 for RSA-2048 (rsa_bits = {rsa_bits})", atr_text)
    algorithms = r.raw("algorithms", expected="a list of algorithm names")
    if not isinstance(algorithms, list) or not all(isinstance(a, str) for a in algorithms) \
            or f"RSA-{rsa_bits}" not in algorithms:
        raise r.err("algorithms", f'a list of names including "RSA-{rsa_bits}"', algorithms)
    pin_mode = r.choice("pin_mode", PIN_MODES)
    serial_prefix = r.str("serial_prefix", expected="1 to 8 upper-case letters or digits",
                          pattern=re.compile(r"^[A-Z0-9]{1,8}$"))

    pp = r.table_("pin_policy")
    policy = PinPolicy(
        min_length=pp.int("min_length", 4, 8),
        max_length=pp.int("max_length", 4, 8),
        digits_only=pp.bool("digits_only"),
        pin_tries=pp.int("pin_tries", 1, 15),
        puk_tries=pp.int("puk_tries", 1, 15),
        pad_byte=pp.int("pad_byte", 0, 255),
        factory_test_pin=pp.str("factory_test_pin", None, pattern=re.compile(r"^\d{4,8}$"),
                                expected="4 to 8 digits"),
        factory_test_puk=pp.str("factory_test_puk", None, pattern=re.compile(r"^\d{4,8}$"),
                                expected="4 to 8 digits"),
    )
    if policy.min_length > policy.max_length:
        raise pp.err("min_length", f"at most max_length ({policy.max_length})", policy.min_length)
    if pin_mode == "preset":
        for k in ("factory_test_pin", "factory_test_puk"):
            v = getattr(policy, k)
            if v is None or not policy.min_length <= len(v) <= policy.max_length:
                raise pp.err(k, f'{policy.min_length}..{policy.max_length} digits (pin_mode = "preset" needs it)', v)

    ee = r.table_("eeprom")
    eeprom = Eeprom(
        total_bytes=ee.int("total_bytes", 4096, 1 << 20),
        system_reserved_bytes=ee.int("system_reserved_bytes", 0, 1 << 20),
        ef_header_bytes=ee.int("ef_header_bytes", 0, 1024),
        df_header_bytes=ee.int("df_header_bytes", 0, 1024),
        pin_object_bytes=ee.int("pin_object_bytes", 0, 1024),
        key_slot_bytes=ee.bits_map("key_slot_bytes", 0, 8192, integer=True),
    )

    dl = r.table_("dialect")
    master_key = _aes_key(dl, "admin_test_master_key")
    dialect = Dialect(
        name=dl.choice("name", DIALECTS),
        admin_key_ref=dl.ref("admin_key_ref"),
        admin_algorithm=dl.choice("admin_algorithm", ("AES-128",)),
        admin_key_scheme=dl.choice("admin_key_scheme", admin_keys.SCHEMES),
        admin_test_master_key=master_key,
        admin_tries=dl.int("admin_tries", 1, 15),
        challenge_bytes=dl.int("challenge_bytes", 16, 16, expected="16 (one AES block)"),
        cla_proprietary=dl.int("cla_proprietary", 0x80, 0x80, expected="0x80"),
        ins_switch_keyset=dl.int("ins_switch_keyset", 0x01, 0xFE),
        ins_erase_key=dl.int("ins_erase_key", 0x01, 0xFE),
        ins_get_info=dl.int("ins_get_info", 0x01, 0xFE),
        ins_put_key=dl.int("ins_put_key", 0x01, 0xFE),
        transport_test_key=_aes_key(dl, "transport_test_key"),
    )

    files: list[FileSpec] = []
    seen: set[str] = set()
    for fr in r.tables("files"):
        fpath = fr.path_("path")
        kind = fr.choice("kind", FILE_KINDS)
        if fpath in seen:
            raise fr.err("path", "a path not listed before", fpath)
        if (kind == "MF") != (fpath == "3F00"):
            raise fr.err("kind", '"MF" exactly for path "3F00"', kind)
        parent = fpath.rsplit("/", 1)[0] if "/" in fpath else None
        if parent is not None and parent not in seen:
            raise fr.err("path", f"a file whose parent DF {parent} is listed before it", fpath)
        if parent is not None and next(f for f in files if f.path == parent).kind == "EF":
            raise fr.err("path", f"a file under a DF, but {parent} is an EF", fpath)
        size = fr.int("size", 1, 0x7FFF) if kind == "EF" else 0
        content = fr.str("content", "zero", expected='"zero", "serial" or hex bytes')
        if content not in ("zero", "serial"):
            try:
                if len(bytes.fromhex(content)) > size:
                    raise fr.err("content", f"at most size ({size}) bytes", content)
            except ValueError:
                raise fr.err("content", '"zero", "serial" or hex bytes', content) from None
        seen.add(fpath)
        files.append(FileSpec(
            path=fpath, kind=kind, label=fr.str("label", fpath), size=size,
            read=fr.rule("read", "always"), update=fr.rule("update", "admin"),
            delete=fr.rule("delete", "admin"), create=fr.rule("create", "admin"), content=content))
    if not files or files[0].path != "3F00":
        raise r.err("files", "the MF (3F00) as the first file", [f.path for f in files][:1])

    pt = r.table_("paths")
    paths = CardPaths(id_carta=pt.path_("id_carta"), dati_personali=pt.path_("dati_personali"),
                      renewal_marker=pt.path_("renewal_marker", None))
    for k in ("id_carta", "dati_personali", "renewal_marker"):
        v = getattr(paths, k)
        if v is not None and not any(f.path == v and f.kind == "EF" for f in files):
            raise pt.err(k, "the path of an EF listed in [[files]]", v)
    if next(f for f in files if f.path == paths.id_carta).size != 16:
        raise pt.err("id_carta", "an EF of 16 bytes (the card serial)", paths.id_carta)

    keysets: list[Keyset] = []
    by_ref: dict[int, Keyset] = {}
    dfs = {f.path for f in files if f.kind in ("MF", "DF")}
    for kr in r.tables("keysets"):
        ks = Keyset(
            name=kr.str("name", pattern=re.compile(r"^CNS\d$"), expected='"CNS0" or "CNS1"'),
            label=kr.str("label", ""), df=kr.path_("df"), pin_df=kr.path_("pin_df", None),
            key_ref=kr.ref("key_ref"), spare_key_ref=kr.ref("spare_key_ref"),
            cert_path=kr.path_("cert"), spare_cert_path=kr.path_("spare_cert"),
            pin_ref=kr.ref("pin_ref"), puk_ref=kr.ref("puk_ref"),
            pin_tries=kr.int("pin_tries", 1, 15, policy.pin_tries),
            puk_tries=kr.int("puk_tries", 1, 15, policy.puk_tries),
            usage=tuple(kr.raw("usage", ["sign"])),
        )
        if not set(ks.usage) <= {"sign", "decipher"} or not ks.usage:
            raise kr.err("usage", 'a list of "sign", "decipher"', list(ks.usage))
        for k in ("df", "pin_df"):
            v = getattr(ks, k)
            if v is not None and v not in dfs:
                raise kr.err(k, "the path of a DF listed in [[files]]", v)
        for k in ("cert_path", "spare_cert_path"):
            v = getattr(ks, k)
            if v.rsplit("/", 1)[0] not in dfs:
                raise kr.err(k.replace("_path", ""), "a path under a DF listed in [[files]]", v)
        for k in ("pin_ref", "puk_ref"):
            if getattr(ks, k) > 0x1F:
                raise kr.err(k, "a PIN reference 0x01..0x1F", getattr(ks, k))
        for ref in ks.key_refs:
            if ref in by_ref or ks.key_ref == ks.spare_key_ref:
                raise kr.err("spare_key_ref" if ref == ks.spare_key_ref else "key_ref",
                             "a key reference no other slot uses", ref)
            by_ref[ref] = ks
        if any(k.name == ks.name for k in keysets):
            raise kr.err("name", "a keyset name not used before", ks.name)
        keysets.append(ks)
    pin_refs = [x for ks in keysets for x in (ks.pin_ref, ks.puk_ref)]
    if len(set(pin_refs)) != len(pin_refs):
        raise r.err("keysets", "distinct PIN and PUK references", [f"{x:02X}" for x in pin_refs])

    tt = r.table_("timing")
    timing: dict[str, Timing] = {}
    for tname in TIMING_NAMES:
        t = tt.table_(tname)
        timing[tname] = Timing(
            name=tname, apdu_seconds=t.float("apdu_seconds", 0, 1),
            keygen_seconds=t.bits_map("keygen_seconds", 0, 120),
            sign_seconds=t.bits_map("sign_seconds", 0, 10),
            write_seconds_per_byte=t.float("write_seconds_per_byte", 0, 0.01))
    if any(v for v in timing["zero"].sign_seconds.values()) or timing["zero"].apdu_seconds:
        raise tt.err("zero", "all zero seconds (the zero timing model)", has_got=False)
    if timing["realistic"].sign_seconds[rsa_bits] >= 4.0:
        raise tt.err("realistic.sign_seconds", "under 4 s for the model's RSA size (tender §5.2.1.2)",
                     timing["realistic"].sign_seconds[rsa_bits])

    model = CardModel(
        id=mid, name=name, source=path, atr=atr, rsa_bits=rsa_bits, algorithms=tuple(algorithms),
        pin_mode=pin_mode, serial_prefix=serial_prefix, pin_policy=policy, eeprom=eeprom,
        keysets=tuple(keysets), files=tuple(files), paths=paths, timing=timing, dialect=dialect,
        description=r.str("description", ""), ic_manufacturer=h[2], mask_manufacturer=h[3],
        cns_version=version, _by_ref=by_ref)
    budget = model.eeprom.system_reserved_bytes + sum(
        (eeprom.df_header_bytes if f.kind != "EF" else eeprom.ef_header_bytes + f.size) for f in files
    ) + len(pin_refs) * eeprom.pin_object_bytes
    if budget > eeprom.total_bytes:
        raise ee.err("total_bytes", f"room for the factory files ({budget} bytes)", eeprom.total_bytes)
    return model


def load_models(directory: str | Path | None = None) -> dict[str, CardModel]:
    """All ``*.toml`` models in ``directory`` (default: the packaged ``cards/``), by id."""
    d = Path(directory) if directory is not None else CARDS_DIR
    if not d.is_dir():
        raise ProfileError(str(d), "(directory)", "a folder of card model TOML files", has_got=False)
    models: dict[str, CardModel] = {}
    for f in sorted(d.glob("*.toml")):
        m = load_model(f)
        if m.id in models:
            raise ProfileError(_shown(f), "id", f"an id no other model uses ({models[m.id].source} has it)", m.id)
        models[m.id] = m
    return models


def identify(atr: bytes, models: Mapping[str, CardModel] | None = None) -> CardModel | None:
    """The model whose ATR is exactly ``atr``; None for an unknown card."""
    if models is None:
        models = load_models()
    atr = bytes(atr)
    for m in models.values():
        if m.atr == atr:
            return m
    return None
