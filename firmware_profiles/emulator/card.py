"""``EmulatedCard``: an Italian CNS card from a ``CardModel``, APDU in, APDU out.

Owns: the card's session (power, security state, current file, security
environment, command chaining, GET RESPONSE), the ISO 7816-4/-8/-9 commands
and the personalization dialect of SCHEMA.md, fault application, and writing
the state after every state-changing APDU. Malformed or unsupported APDUs get
ISO status words, never an exception.

Imports: ``firmware_profiles.model`` and ``firmware_profiles.emulator.*``.
Never imported by the agent's production code.

Exceptions::

    EmulatorError(Exception)
     ├── CardRemovedError     a fault pulled the card (tear, drop); power_on() reinserts it
     └── CardNotPoweredError  transmit() before power_on()
"""
from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path


from firmware_profiles.emulator import admin
from firmware_profiles.emulator import keys as keymod
from firmware_profiles.emulator.faults import Fault, FaultPlan
from firmware_profiles.emulator.iso import (
    CLA_CHAINING,
    CLA_ISO,
    CLA_PROPRIETARY,
    CRT_AT,
    CRT_CT,
    CRT_DST,
    FD_DF,
    FD_TRANSPARENT_EF,
    GEN_P1_GENERATE,
    GEN_P1_READ_PUBLIC,
    INS,
    LCS_OPERATIONAL_ACTIVATED,
    MAX_SHORT_LE,
    MSE_RESTORE,
    MSE_SET_CNS,
    MSE_SET_COMPUTE,
    PADDING_INDICATOR_NONE,
    PSO_CDS,
    PSO_DECIPHER,
    SELECT_P1_BY_FID,
    SELECT_P1_BY_NAME,
    SELECT_P1_CHILD_DF,
    SELECT_P1_CHILD_EF,
    SELECT_P1_PARENT,
    SELECT_P1_PATH_FROM_CURRENT,
    SELECT_P1_PATH_FROM_MF,
    SELECT_P2_FCI,
    SELECT_P2_FCP,
    SELECT_P2_NO_DATA,
    SW,
    TAG_EXPONENT,
    TAG_FCP,
    TAG_FILE_DESCRIPTOR,
    TAG_FILE_ID,
    TAG_FILE_SIZE,
    TAG_KEY_BITS,
    TAG_KEY_REF,
    TAG_KEY_REF_PRIVATE,
    TAG_LIFE_CYCLE,
    TAG_MODULUS,
    TAG_PUBLIC_KEY,
    TAG_SEC_ATTR_PROPRIETARY,
    Command,
    parse_tlvs,
    tlv,
)
from firmware_profiles.emulator.state import CardState, FileRecord, KeyRecord, PinRecord
from firmware_profiles.model import AccessRule, CardModel, Keyset, Timing

log = logging.getLogger(__name__)

MF = "3F00"
RESERVED_FIDS = {0x3F00, 0x3FFF, 0xFFFF}
GET_INFO_EEPROM = 0x01
GET_INFO_KEY_SLOTS = 0x02
GET_INFO_SERIAL = 0x03
GET_INFO_ADMIN_KEY = 0x04    # issuer key version: 00 = the batch's transport key, 01 = the card's own
KVN_TRANSPORT, KVN_CARD = 0x00, 0x01
SECRET_INS = {INS.VERIFY, INS.CHANGE_REFERENCE_DATA, INS.RESET_RETRY_COUNTER, INS.EXTERNAL_AUTHENTICATE}
CHAINABLE_INS = {INS.PERFORM_SECURITY_OPERATION, INS.UPDATE_BINARY, INS.CREATE_FILE,
                 INS.GENERATE_ASYMMETRIC_KEY_PAIR, INS.EXTERNAL_AUTHENTICATE}
ISO_INS = {i.value for i in INS} - {INS.SWITCH_KEYSET, INS.ERASE_KEY}


class EmulatorError(Exception):
    pass


class CardRemovedError(EmulatorError):
    """The card left the reader (fault injection). Call power_on() to insert it again."""


class CardNotPoweredError(EmulatorError):
    pass


class _Torn(Exception):
    pass


Response = tuple[bytes, int]


def _r(sw: int, data: bytes = b"") -> Response:
    return data, int(sw)


class EmulatedCard:
    """One emulated CNS card. Thread-safe: one APDU at a time."""

    def __init__(self, model: CardModel, *, state_path: str | Path | None = None,
                 faults: FaultPlan | list[Fault | str] | None = None,
                 timing: str | Timing | None = None, serial: str | None = None,
                 apdu_log: str | Path | None = None,
                 sleep: Callable[[float], None] = time.sleep, transport_key: bytes | None = None):
        """``transport_key``: a blank card as it leaves the factory keyed with its batch's transport key
        (issue 12 item 3), to be replaced by its own key at the first personalization (PUT KEY);
        without it the blank card already carries its own diversified key."""
        self.model = model
        if timing is None or isinstance(timing, str):
            name = timing or "zero"
            if name not in model.timing:
                raise ValueError(f"unknown timing {name!r}: use one of {', '.join(model.timing)}")
            timing = model.timing[name]
        self.timing: Timing = timing
        self.faults = faults if isinstance(faults, FaultPlan) else FaultPlan(faults)
        self.state_path = Path(state_path) if state_path else None
        self._sleep = sleep
        self._lock = threading.RLock()
        self._apdu_log = Path(apdu_log) if apdu_log else None
        if self.state_path and self.state_path.exists():
            self._state = CardState.load(self.state_path, model)
            if serial is not None and serial != self._state.serial:
                raise ValueError(f"{self.state_path} holds card {self._state.serial}, not {serial}")
        else:
            self._state = CardState.blank(model, serial)
            if transport_key is not None:
                if len(transport_key) != 16:
                    raise ValueError("a transport key is 16 bytes (AES-128)")
                self._state.extra["admin_key"] = transport_key.hex()
                self._state.extra["admin_kvn"] = KVN_TRANSPORT
            self._persist()
        self._powered = False
        self._removed = False
        self._clear_session()

    # ================================================================ public API
    @property
    def atr(self) -> bytes:
        return self.model.atr

    @property
    def state(self) -> CardState:
        """The persistent state (files, keys, counters). Tests read it; do not mutate."""
        return self._state

    @property
    def serial(self) -> str:
        return self._state.serial

    @property
    def powered(self) -> bool:
        return self._powered

    @property
    def verified_pins(self) -> frozenset[int]:
        return frozenset(self._verified)

    @property
    def admin_authenticated(self) -> bool:
        return self._admin

    def power_on(self) -> bytes:
        with self._lock:
            self._removed = False
            self._powered = True
            self._clear_session()
            return self.model.atr

    def power_off(self) -> None:
        with self._lock:
            self._powered = False
            self._clear_session()

    def reset(self) -> bytes:
        with self._lock:
            self.power_off()
            return self.power_on()

    def transmit(self, apdu: bytes) -> bytes:
        """One C-APDU → response data + SW1 SW2. Raises only CardRemovedError/CardNotPoweredError."""
        with self._lock:
            if self._removed:
                raise CardRemovedError("the card was removed (fault); power it on to reinsert")
            if not self._powered:
                raise CardNotPoweredError("transmit() before power_on()")
            apdu = bytes(apdu)
            try:
                data, sw = self._transmit(apdu)
            except _Torn:
                self._log(apdu, None)
                raise CardRemovedError("power cut / card pulled (fault injection)") from None
            out = data + sw.to_bytes(2, "big")
            self._log(apdu, out)
            return out

    def eeprom_used(self) -> int:
        ee = self.model.eeprom
        used = ee.system_reserved_bytes + len(self._state.pins) * ee.pin_object_bytes
        for f in self._state.files.values():
            used += ee.ef_header_bytes + f.size if f.kind == "EF" else ee.df_header_bytes
        for k in self._state.keys.values():
            used += ee.key_slot_bytes.get(k.bits, max(ee.key_slot_bytes.values()))
        return used

    def eeprom_free(self) -> int:
        return self.model.eeprom.total_bytes - self.eeprom_used()

    def snapshot(self) -> dict:
        """The card's persistent state as the state file's JSON (a test device: it holds its keys)."""
        with self._lock:
            return self._state.to_json()

    def restore(self, snapshot: dict) -> None:
        """Replace the persistent state with ``snapshot`` (from ``snapshot()``), like swapping in a
        card in that state: power, security state and faults are reset, the state file rewritten."""
        with self._lock:
            state = CardState.from_json(snapshot)
            if state.model_id != self.model.id:
                raise ValueError(f"snapshot of a {state.model_id} card, not {self.model.id}")
            self._state = state
            self.faults.clear()
            self._powered, self._removed = False, False
            self._clear_session()
            self._persist()

    def pull(self) -> None:
        """The card leaves the reader (as a fault would): power and security state are gone."""
        with self._lock:
            self._powered = False
            self._removed = True
            self._clear_session()

    # ================================================================ session
    def _clear_session(self) -> None:
        self._verified: set[int] = set()
        self._admin = False
        self._challenge: bytes | None = None
        self._current_df = MF
        self._current_ef: str | None = None
        self._env: dict[int, int] = {}  # CRT tag (B6/B8/A4) → key ref
        self._chain: tuple[int, int, int, bytearray] | None = None
        self._pending: bytes = b""
        self._tear: Fault | None = None

    def _persist(self) -> None:
        if self.state_path:
            self._state.save(self.state_path)

    def _commit(self) -> None:
        """After every state-changing APDU: one atomic state write."""
        self._state.write_count += 1
        self._persist()

    def _log(self, apdu: bytes, resp: bytes | None) -> None:
        """One JSON line per APDU at the card side: the recording format that tests replay
        (described in agent/card/transport.py; tests/support/replay.py makes fixtures of it)."""
        if not self._apdu_log:
            return
        shown = apdu[:5].hex() + ("**" * (len(apdu) - 5)) if len(apdu) > 5 and apdu[1] in SECRET_INS else apdu.hex()
        rec = {"t": round(time.time(), 6), "c": shown, "r": resp.hex() if resp is not None else None}
        with open(self._apdu_log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")

    # ================================================================ dispatch
    def _transmit(self, apdu: bytes) -> Response:
        if self.timing.apdu_seconds:
            self._sleep(self.timing.apdu_seconds)
        fault = self.faults.match(apdu[1]) if len(apdu) >= 2 else None
        if fault is not None:
            log.info("fault %s fires on %s", fault.kind, apdu[:4].hex())
            if fault.kind == "sw":
                return _r(fault.sw)
            if fault.kind == "delay":
                self._sleep(fault.seconds)
            elif fault.kind == "drop" and not fault.after:
                self.pull()
                raise _Torn()
            elif fault.kind == "tear":
                self._tear = fault
        try:
            resp = self._dispatch(apdu)
        except _Torn:
            self.pull()
            raise
        except Exception:  # a bug must not crash the reader loop: answer like a card would
            log.exception("emulator error on APDU %s", apdu.hex())
            resp = _r(SW.NO_PRECISE_DIAGNOSIS)
        finally:
            self._tear = None
        if fault is not None and fault.kind == "drop" and fault.after:
            self.pull()
            raise _Torn()
        return resp

    def _dispatch(self, apdu: bytes) -> Response:
        cmd = Command.parse(apdu)
        if isinstance(cmd, SW):
            self._chain = None
            return _r(cmd)
        cla = cmd.cla
        if cla == 0xFF:
            return _r(SW.CLA_NOT_SUPPORTED)
        if cla & 0x0C:
            return _r(SW.SECURE_MESSAGING_NOT_SUPPORTED)
        if cla & 0x03:
            return _r(SW.LOGICAL_CHANNEL_NOT_SUPPORTED)
        base = cla & ~CLA_CHAINING & 0xFF
        if base not in (CLA_ISO, CLA_PROPRIETARY):
            return _r(SW.CLA_NOT_SUPPORTED)

        # GET RESPONSE continues a long answer; anything else drops it.
        if cmd.ins == INS.GET_RESPONSE and base == CLA_ISO:
            return self._get_response(cmd)
        self._pending = b""

        # Command chaining (ISO 7816-4 §5.1.1.1).
        if self._chain is not None:
            ins, p1, p2, buf = self._chain
            if (cmd.ins, cmd.p1, cmd.p2) != (ins, p1, p2):
                self._chain = None
                return _r(SW.LAST_COMMAND_OF_CHAIN_EXPECTED)
            buf += cmd.data
            if len(buf) > 4096:
                self._chain = None
                return _r(SW.WRONG_LENGTH)
            if cmd.chained:
                return _r(SW.OK)
            self._chain = None
            cmd = Command(base, cmd.ins, cmd.p1, cmd.p2, bytes(buf), cmd.le)
        elif cmd.chained:
            if cmd.ins not in CHAINABLE_INS:
                return _r(SW.COMMAND_CHAINING_NOT_SUPPORTED)
            self._chain = (cmd.ins, cmd.p1, cmd.p2, bytearray(cmd.data))
            return _r(SW.OK)

        handler = self._handler(base, cmd.ins)
        if handler is None:
            return _r(SW.INS_NOT_SUPPORTED)
        data, sw = handler(cmd)
        return self._fit(data, sw, cmd.le)

    def _handler(self, base: int, ins: int) -> Callable[[Command], Response] | None:
        if base == CLA_PROPRIETARY:
            d = self.model.dialect
            return {d.ins_switch_keyset: self._switch_keyset, d.ins_erase_key: self._erase_key,
                    d.ins_get_info: self._get_info, d.ins_put_key: self._put_key}.get(ins)
        return {
            INS.SELECT: self._select, INS.READ_BINARY: self._read_binary,
            INS.UPDATE_BINARY: self._update_binary, INS.VERIFY: self._verify,
            INS.CHANGE_REFERENCE_DATA: self._change_reference_data,
            INS.RESET_RETRY_COUNTER: self._reset_retry_counter,
            INS.MANAGE_SECURITY_ENVIRONMENT: self._mse, INS.PERFORM_SECURITY_OPERATION: self._pso,
            INS.GENERATE_ASYMMETRIC_KEY_PAIR: self._generate, INS.GET_CHALLENGE: self._get_challenge,
            INS.EXTERNAL_AUTHENTICATE: self._external_authenticate, INS.CREATE_FILE: self._create_file,
            INS.DELETE_FILE: self._delete_file,
        }.get(ins)

    def _fit(self, data: bytes, sw: int, le: int | None) -> Response:
        """Answers longer than Le (or 256) go out in parts: data + 61xx, then GET RESPONSE."""
        limit = le or MAX_SHORT_LE
        if sw == SW.OK and len(data) > limit:
            self._pending = data[limit:]
            rest = len(self._pending)
            return data[:limit], SW.BYTES_REMAINING | (rest if rest < 256 else 0)
        return data, sw

    def _get_response(self, cmd: Command) -> Response:
        if cmd.p1 or cmd.p2:
            return _r(SW.INCORRECT_P1P2)
        if not self._pending:
            return _r(SW.CONDITIONS_NOT_SATISFIED)
        n = cmd.le or MAX_SHORT_LE
        chunk, self._pending = self._pending[:n], self._pending[n:]
        if self._pending:
            rest = len(self._pending)
            return chunk, SW.BYTES_REMAINING | (rest if rest < 256 else 0)
        return chunk, SW.OK

    # ================================================================ access
    def _allowed(self, rule: AccessRule) -> bool:
        if rule.kind == "always":
            return True
        if rule.kind == "admin":
            return self._admin
        if rule.kind == "chv":
            return rule.ref in self._verified
        return False

    # ================================================================ files
    @staticmethod
    def _parent(path: str) -> str | None:
        return path.rsplit("/", 1)[0] if "/" in path else None

    def _children(self, df: str) -> list[str]:
        return [p for p in self._state.files if self._parent(p) == df]

    def _find_child(self, df: str, fid: int, kinds: tuple[str, ...] = ("DF", "EF")) -> str | None:
        p = f"{df}/{fid:04X}"
        f = self._state.files.get(p)
        return p if f is not None and f.kind in kinds else None

    def _fcp(self, path: str) -> bytes:
        f = self._state.files[path]
        fid = int(path.rsplit("/", 1)[-1], 16)
        if f.kind == "EF":
            body = (tlv(TAG_FILE_SIZE, f.size.to_bytes(2, "big")) + tlv(TAG_FILE_DESCRIPTOR, bytes([FD_TRANSPARENT_EF]))
                    + tlv(TAG_FILE_ID, fid.to_bytes(2, "big")))
            sec = [f.read.sec_attr_byte, f.update.sec_attr_byte, f.update.sec_attr_byte, 0xFF, 0xFF,
                   f.delete.sec_attr_byte, 0xFF, 0xFF, 0xFF]
        else:
            body = tlv(TAG_FILE_DESCRIPTOR, bytes([FD_DF])) + tlv(TAG_FILE_ID, fid.to_bytes(2, "big"))
            sec = [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, f.delete.sec_attr_byte, 0xFF, f.create.sec_attr_byte, 0xFF]
        body += tlv(TAG_LIFE_CYCLE, bytes([LCS_OPERATIONAL_ACTIVATED])) + tlv(TAG_SEC_ATTR_PROPRIETARY, bytes(sec))
        return tlv(TAG_FCP, body)

    def _select(self, cmd: Command) -> Response:
        if cmd.p2 not in (SELECT_P2_FCI, SELECT_P2_FCP, SELECT_P2_NO_DATA):
            return _r(SW.INCORRECT_P1P2)
        data, cur = cmd.data, self._current_df
        target: str | None
        if cmd.p1 == SELECT_P1_BY_FID:
            if not data:
                target = MF
            elif len(data) != 2:
                return _r(SW.WRONG_LENGTH)
            else:
                fid = int.from_bytes(data, "big")
                parent = self._parent(cur)
                if fid == 0x3F00:
                    target = MF
                elif (child := self._find_child(cur, fid)) is not None:
                    target = child
                elif parent is not None and parent.endswith(f"{fid:04X}"):
                    target = parent
                elif parent is not None:
                    target = self._find_child(parent, fid)
                else:
                    target = None
        elif cmd.p1 in (SELECT_P1_CHILD_DF, SELECT_P1_CHILD_EF):
            if len(data) != 2:
                return _r(SW.WRONG_LENGTH)
            target = self._find_child(cur, int.from_bytes(data, "big"),
                                      ("DF",) if cmd.p1 == SELECT_P1_CHILD_DF else ("EF",))
        elif cmd.p1 == SELECT_P1_PARENT:
            target = self._parent(cur)
        elif cmd.p1 == SELECT_P1_BY_NAME:
            target = None  # this card has no applications selectable by AID
        elif cmd.p1 in (SELECT_P1_PATH_FROM_MF, SELECT_P1_PATH_FROM_CURRENT):
            if not data or len(data) % 2:
                return _r(SW.WRONG_LENGTH)
            fids = [data[i:i + 2].hex().upper() for i in range(0, len(data), 2)]
            if cmd.p1 == SELECT_P1_PATH_FROM_MF:
                if fids[0] == MF:
                    fids = fids[1:]
                base = MF
            else:
                base = cur
            target = "/".join([base, *fids])
            f = self._state.files.get(target)
            # every level but the last must be a DF
            if f is None or any(self._state.files.get("/".join([base, *fids[:i]]), None) is None
                                or self._state.files["/".join([base, *fids[:i]])].kind == "EF"
                                for i in range(1, len(fids))):
                target = None
        else:
            return _r(SW.INCORRECT_P1P2)
        if not target or target not in self._state.files:
            return _r(SW.FILE_NOT_FOUND)
        f = self._state.files[target]
        if f.kind == "EF":
            self._current_ef, self._current_df = target, self._parent(target) or MF
        else:
            self._current_ef, self._current_df = None, target
        return _r(SW.OK, b"" if cmd.p2 == SELECT_P2_NO_DATA else self._fcp(target))

    def _current_file(self) -> tuple[FileRecord | None, int]:
        if self._current_ef is None or self._current_ef not in self._state.files:
            return None, SW.NO_CURRENT_EF
        return self._state.files[self._current_ef], SW.OK

    def _read_binary(self, cmd: Command) -> Response:
        if cmd.p1 & 0x80:
            return _r(SW.FUNCTION_NOT_SUPPORTED)  # short EF identifiers: not on this card
        f, sw = self._current_file()
        if f is None:
            return _r(sw)
        if not self._allowed(f.read):
            return _r(SW.SECURITY_STATUS_NOT_SATISFIED)
        if cmd.le is None or cmd.data:
            return _r(SW.WRONG_LENGTH)
        offset = (cmd.p1 << 8) | cmd.p2
        if offset > f.size:
            return _r(SW.WRONG_P1P2)
        chunk = bytes(f.data[offset:offset + cmd.le])
        return _r(SW.OK if len(chunk) == cmd.le else SW.END_OF_FILE, chunk)

    def _update_binary(self, cmd: Command) -> Response:
        if cmd.p1 & 0x80:
            return _r(SW.FUNCTION_NOT_SUPPORTED)
        f, sw = self._current_file()
        if f is None:
            return _r(sw)
        if not self._allowed(f.update):
            return _r(SW.SECURITY_STATUS_NOT_SATISFIED)
        offset = (cmd.p1 << 8) | cmd.p2
        if not cmd.data:
            return _r(SW.WRONG_LENGTH)
        if offset > f.size:
            return _r(SW.WRONG_P1P2)
        if offset + len(cmd.data) > f.size:
            return _r(SW.WRONG_LENGTH)
        if self.timing.write_seconds_per_byte:
            self._sleep(self.timing.write_seconds_per_byte * len(cmd.data))
        if self._tear is not None:
            n = min(self._tear.bytes, len(cmd.data))
            f.data[offset:offset + n] = cmd.data[:n]
            self._commit()
            raise _Torn()
        f.data[offset:offset + len(cmd.data)] = cmd.data
        self._commit()
        return _r(SW.OK)

    def _create_file(self, cmd: Command) -> Response:
        if cmd.p1 or cmd.p2:
            return _r(SW.INCORRECT_P1P2)
        df = self._state.files[self._current_df]
        if not self._allowed(df.create):
            return _r(SW.SECURITY_STATUS_NOT_SATISFIED)
        if len(cmd.data) < 2 or cmd.data[0] != TAG_FCP:
            return _r(SW.WRONG_DATA)
        fcp = parse_tlvs(cmd.data[2:2 + cmd.data[1]]) if cmd.data[1] == len(cmd.data) - 2 else None
        if fcp is None or len(fcp.get(TAG_FILE_ID, b"")) != 2 or len(fcp.get(TAG_FILE_DESCRIPTOR, b"")) != 1:
            return _r(SW.WRONG_DATA)
        fid = int.from_bytes(fcp[TAG_FILE_ID], "big")
        desc = fcp[TAG_FILE_DESCRIPTOR][0]
        if fid in RESERVED_FIDS or desc not in (FD_TRANSPARENT_EF, FD_DF):
            return _r(SW.WRONG_DATA)
        kind = "EF" if desc == FD_TRANSPARENT_EF else "DF"
        size = 0
        if kind == "EF":
            raw = fcp.get(TAG_FILE_SIZE, b"")
            if len(raw) not in (1, 2):
                return _r(SW.WRONG_DATA)
            size = int.from_bytes(raw, "big")
            if not 1 <= size <= 0x7FFF:
                return _r(SW.WRONG_DATA)
        sec = fcp.get(TAG_SEC_ATTR_PROPRIETARY, b"")
        if sec and len(sec) != 9:
            return _r(SW.WRONG_DATA)

        def rule(i: int, default: str) -> AccessRule:
            return AccessRule.from_byte(sec[i]) if sec else AccessRule(default)

        path = f"{self._current_df}/{fid:04X}"
        if path in self._state.files:
            return _r(SW.FILE_ALREADY_EXISTS)
        ee = self.model.eeprom
        cost = ee.ef_header_bytes + size if kind == "EF" else ee.df_header_bytes
        if cost > self.eeprom_free():
            return _r(SW.NOT_ENOUGH_MEMORY)
        if self._tear is not None:
            raise _Torn()
        if kind == "EF":
            rec = FileRecord("EF", size, bytearray(size), rule(0, "always"), rule(1, "admin"),
                             rule(5, "admin"), AccessRule("never"))
        else:
            rec = FileRecord("DF", 0, bytearray(), AccessRule("always"), AccessRule("never"),
                             rule(5, "admin"), rule(7, "admin"))
        self._state.files[path] = rec
        self._commit()
        if kind == "EF":
            self._current_ef = path
        else:
            self._current_df, self._current_ef = path, None
        return _r(SW.OK)

    def _delete_file(self, cmd: Command) -> Response:
        if cmd.p1 or cmd.p2:
            return _r(SW.INCORRECT_P1P2)
        if len(cmd.data) != 2:
            return _r(SW.WRONG_LENGTH)
        path = self._find_child(self._current_df, int.from_bytes(cmd.data, "big"))
        if path is None:
            return _r(SW.FILE_NOT_FOUND)
        f = self._state.files[path]
        if not self._allowed(f.delete):
            return _r(SW.SECURITY_STATUS_NOT_SATISFIED)
        if f.kind == "DF" and self._children(path):
            return _r(SW.CONDITIONS_NOT_SATISFIED)
        if self._tear is not None:
            raise _Torn()
        del self._state.files[path]
        self._commit()
        if self._current_ef == path:
            self._current_ef = None
        return _r(SW.OK)

    # ================================================================ PINs
    def _pin_block(self, data: bytes) -> str | None:
        """Strip the pad bytes; None if what is left is not a well-formed code."""
        pp = self.model.pin_policy
        stripped = data.rstrip(bytes([pp.pad_byte])).rstrip(b"\x00")
        try:
            s = stripped.decode("ascii")
        except UnicodeDecodeError:
            return None
        if not s or (pp.digits_only and not s.isdigit()):
            return None
        return s

    def _valid_new_code(self, code: str | None) -> bool:
        pp = self.model.pin_policy
        return code is not None and pp.min_length <= len(code) <= pp.max_length

    def _check_code(self, ref: int, rec: PinRecord, data: bytes) -> int:
        """Compare a presented code; counts tries. Returns OK, VERIFY_FAILED|n or AUTH_METHOD_BLOCKED."""
        if rec.blocked:
            return SW.AUTH_METHOD_BLOCKED
        if rec.value is None:
            return SW.REFERENCE_DATA_NOT_USABLE
        if self._pin_block(data) == rec.value:
            if rec.tries_left != rec.max_tries:
                rec.tries_left = rec.max_tries
                self._commit()
            return SW.OK
        rec.tries_left -= 1
        self._verified.discard(ref)
        self._commit()
        return SW.AUTH_METHOD_BLOCKED if rec.blocked else SW.VERIFY_FAILED | rec.tries_left

    def _pin(self, p2: int) -> tuple[int, PinRecord | None]:
        ref = p2 & 0x7F  # bit 8: "specific" reference (STIncard masks search parent DFs)
        return ref, self._state.pins.get(ref)

    def _verify(self, cmd: Command) -> Response:
        if cmd.p1 != 0x00:
            return _r(SW.INCORRECT_P1P2)
        ref, rec = self._pin(cmd.p2)
        if rec is None:
            return _r(SW.REFERENCED_DATA_NOT_FOUND)
        if not cmd.data:  # status query: tries left, nothing counted
            if rec.blocked:
                return _r(SW.AUTH_METHOD_BLOCKED)
            if rec.value is None:
                return _r(SW.REFERENCE_DATA_NOT_USABLE)
            return _r(SW.OK if ref in self._verified else SW.VERIFY_FAILED | rec.tries_left)
        if len(cmd.data) > 16:
            return _r(SW.WRONG_LENGTH)
        sw = self._check_code(ref, rec, cmd.data)
        if sw == SW.OK:
            self._verified.add(ref)
        return _r(sw)

    def _split_pair(self, data: bytes) -> tuple[bytes, bytes] | None:
        n = self.model.pin_policy.max_length
        if len(data) != 2 * n:
            return None
        return data[:n], data[n:]

    def _change_reference_data(self, cmd: Command) -> Response:
        ref, rec = self._pin(cmd.p2)
        if rec is None:
            return _r(SW.REFERENCED_DATA_NOT_FOUND)
        if cmd.p1 == 0x00:  # old ‖ new
            pair = self._split_pair(cmd.data)
            if pair is None:
                return _r(SW.WRONG_LENGTH)
            new = self._pin_block(pair[1])
            if not self._valid_new_code(new):
                return _r(SW.WRONG_DATA)
            sw = self._check_code(ref, rec, pair[0])
            if sw != SW.OK:
                return _r(sw)
        elif cmd.p1 == 0x01:  # new only: issuer sets the code at personalization
            if not self._admin:
                return _r(SW.SECURITY_STATUS_NOT_SATISFIED)
            if self.model.pin_mode == "preset":
                return _r(SW.CONDITIONS_NOT_SATISFIED)  # sealed codes: the issuer never sets them
            new = self._pin_block(cmd.data)
            if len(cmd.data) != self.model.pin_policy.max_length or not self._valid_new_code(new):
                return _r(SW.WRONG_DATA)
        else:
            return _r(SW.INCORRECT_P1P2)
        if self._tear is not None:
            raise _Torn()
        rec.value, rec.tries_left = new, rec.max_tries
        self._verified.add(ref)
        self._commit()
        return _r(SW.OK)

    def _reset_retry_counter(self, cmd: Command) -> Response:
        ref, rec = self._pin(cmd.p2)
        ks = self.model.keyset_for_pin(ref)
        if rec is None or ks is None or ref != ks.pin_ref:
            return _r(SW.REFERENCED_DATA_NOT_FOUND)
        puk = self._state.pins[ks.puk_ref]
        new: str | None = rec.value
        n = self.model.pin_policy.max_length
        if cmd.p1 in (0x00, 0x01):
            if (cmd.p1 == 0x00 and len(cmd.data) != 2 * n) or (cmd.p1 == 0x01 and len(cmd.data) != n):
                return _r(SW.WRONG_LENGTH)
            if cmd.p1 == 0x00:
                new = self._pin_block(cmd.data[n:])
                if not self._valid_new_code(new):
                    return _r(SW.WRONG_DATA)
            sw = self._check_code(ks.puk_ref, puk, cmd.data[:n])
            if sw != SW.OK:
                return _r(sw)
        elif cmd.p1 in (0x02, 0x03):  # issuer unblock (admin authenticated), no PUK
            if not self._admin:
                return _r(SW.SECURITY_STATUS_NOT_SATISFIED)
            if cmd.p1 == 0x02:
                new = self._pin_block(cmd.data)
                if len(cmd.data) != n or not self._valid_new_code(new):
                    return _r(SW.WRONG_DATA)
            elif cmd.data:
                return _r(SW.WRONG_LENGTH)
        else:
            return _r(SW.INCORRECT_P1P2)
        if new is None:
            return _r(SW.REFERENCE_DATA_NOT_USABLE)
        if self._tear is not None:
            raise _Torn()
        rec.value, rec.tries_left = new, rec.max_tries
        self._commit()
        return _r(SW.OK)

    # ================================================================ admin auth
    def _get_challenge(self, cmd: Command) -> Response:
        if cmd.p1 or cmd.p2:
            return _r(SW.INCORRECT_P1P2)
        if cmd.le is None or cmd.data:
            return _r(SW.WRONG_LENGTH)
        rnd = secrets.token_bytes(cmd.le)
        self._challenge = rnd if cmd.le == self.model.dialect.challenge_bytes else None
        return _r(SW.OK, rnd)

    def _external_authenticate(self, cmd: Command) -> Response:
        d = self.model.dialect
        if cmd.p1 != 0x00:
            return _r(SW.INCORRECT_P1P2)
        if (cmd.p2 & 0x7F) != d.admin_key_ref:
            return _r(SW.REFERENCED_DATA_NOT_FOUND)
        if len(cmd.data) != 16:
            return _r(SW.WRONG_LENGTH)
        if self._state.admin_tries_left == 0:
            return _r(SW.AUTH_METHOD_BLOCKED)
        challenge, self._challenge = self._challenge, None
        if challenge is None:
            return _r(SW.CONDITIONS_NOT_SATISFIED)
        # the transport key until PUT KEY, then the card's own (emulator.admin)
        expected = admin.cryptogram(self.admin_key, challenge)
        if secrets.compare_digest(expected, cmd.data):
            self._admin = True
            if self._state.admin_tries_left != d.admin_tries:
                self._state.admin_tries_left = d.admin_tries
                self._commit()
            return _r(SW.OK)
        self._admin = False
        self._state.admin_tries_left -= 1
        self._commit()
        left = self._state.admin_tries_left
        return _r(SW.AUTH_METHOD_BLOCKED if left == 0 else SW.VERIFY_FAILED | min(left, 15))

    # ================================================================ keys
    def _mse(self, cmd: Command) -> Response:
        if cmd.p1 == MSE_RESTORE:
            if cmd.data:
                return _r(SW.WRONG_LENGTH)
            if not 0x01 <= cmd.p2 <= 0x0F:
                return _r(SW.REFERENCED_DATA_NOT_FOUND)
            self._env.clear()
            return _r(SW.OK)
        if cmd.p1 not in (MSE_SET_CNS, MSE_SET_COMPUTE) or cmd.p2 not in (CRT_DST, CRT_CT, CRT_AT):
            return _r(SW.INCORRECT_P1P2)
        tl = parse_tlvs(cmd.data)
        if tl is None:
            return _r(SW.WRONG_DATA)
        ref_raw = tl.get(TAG_KEY_REF, tl.get(TAG_KEY_REF_PRIVATE))
        if ref_raw is None or len(ref_raw) != 1:
            return _r(SW.WRONG_DATA)
        ref = ref_raw[0]
        if self.model.keyset_for_key(ref) is None:
            return _r(SW.REFERENCED_DATA_NOT_FOUND)
        self._env[cmd.p2] = ref
        return _r(SW.OK)

    def _pso(self, cmd: Command) -> Response:
        if (cmd.p1, cmd.p2) == PSO_CDS:
            ref = self._env.get(CRT_DST, self._env.get(CRT_AT))
            usage, block = "sign", cmd.data
        elif (cmd.p1, cmd.p2) == PSO_DECIPHER:
            ref = self._env.get(CRT_CT)
            if not cmd.data or cmd.data[0] != PADDING_INDICATOR_NONE:
                return _r(SW.WRONG_DATA)
            usage, block = "decipher", cmd.data[1:]
        else:
            return _r(SW.INCORRECT_P1P2)
        if ref is None:
            return _r(SW.CONDITIONS_NOT_SATISFIED)
        ks = self.model.keyset_for_key(ref)
        key = self._state.keys.get(ref)
        if ks is None or key is None:
            return _r(SW.REFERENCED_DATA_NOT_FOUND)
        if usage not in ks.usage:
            return _r(SW.CONDITIONS_NOT_SATISFIED)
        if ks.pin_ref not in self._verified:
            return _r(SW.SECURITY_STATUS_NOT_SATISFIED)
        if not block:
            return _r(SW.WRONG_LENGTH)
        out = keymod.private_op(key, block)
        if out is None:
            return _r(SW.WRONG_DATA)
        seconds = self.timing.sign_seconds.get(key.bits, 0)
        if seconds:
            self._sleep(seconds)
        return _r(SW.OK, out)

    @staticmethod
    def _public_key(key: KeyRecord) -> bytes:
        n = key.n.to_bytes((key.bits + 7) // 8, "big")
        e = key.e.to_bytes((key.e.bit_length() + 7) // 8, "big")
        return tlv(TAG_PUBLIC_KEY, tlv(TAG_MODULUS, n) + tlv(TAG_EXPONENT, e))

    def _generate(self, cmd: Command) -> Response:
        ks = self.model.keyset_for_key(cmd.p2)
        if cmd.p1 == GEN_P1_READ_PUBLIC:
            if ks is None or cmd.p2 not in self._state.keys:
                return _r(SW.REFERENCED_DATA_NOT_FOUND)
            return _r(SW.OK, self._public_key(self._state.keys[cmd.p2]))
        if cmd.p1 != GEN_P1_GENERATE:
            return _r(SW.INCORRECT_P1P2)
        if ks is None:
            return _r(SW.REFERENCED_DATA_NOT_FOUND)
        if not self._admin:
            return _r(SW.SECURITY_STATUS_NOT_SATISFIED)
        bits = self.model.rsa_bits
        if cmd.data:
            tl = parse_tlvs(cmd.data)
            raw = tl.get(TAG_KEY_BITS) if tl else None
            if raw is None or len(raw) != 2:
                return _r(SW.WRONG_DATA)
            bits = int.from_bytes(raw, "big")
            if f"RSA-{bits}" not in self.model.algorithms:
                return _r(SW.WRONG_DATA)
        ee = self.model.eeprom
        old = self._state.keys.get(cmd.p2)
        cost = ee.key_slot_bytes[bits] - (ee.key_slot_bytes.get(old.bits, 0) if old else 0)
        if cost > self.eeprom_free():
            return _r(SW.NOT_ENOUGH_MEMORY)
        seconds = self.timing.keygen_seconds.get(bits, 0)
        if seconds:
            t0 = time.monotonic()
            key = keymod.generate(bits)
            self._sleep(max(0.0, seconds - (time.monotonic() - t0)))
        else:
            # a real card never generates a key it already holds (renewal puts old and new side by side);
            # the pool cycles, so draw past any modulus on this card
            held = {k.n for k in self._state.keys.values()}
            key = keymod.from_pool(bits)
            for _ in range(keymod.POOL_SIZE):
                if key.n not in held:
                    break
                key = keymod.from_pool(bits)
        if self._tear is not None:
            raise _Torn()
        self._state.keys[cmd.p2] = key
        self._commit()
        return _r(SW.OK, self._public_key(key))

    # ================================================================ renewal (proprietary)
    def _switch_keyset(self, cmd: Command) -> Response:
        """Live ⇄ spare, key and certificate, for the keysets in P2's bit mask: one state write."""
        n = len(self.model.keysets)
        if cmd.p1 != 0x00 or cmd.p2 == 0 or cmd.p2 >> n:
            return _r(SW.INCORRECT_P1P2)
        if cmd.data:
            return _r(SW.WRONG_LENGTH)
        if not self._admin:
            return _r(SW.SECURITY_STATUS_NOT_SATISFIED)
        chosen: list[Keyset] = [ks for i, ks in enumerate(self.model.keysets) if cmd.p2 >> i & 1]
        for ks in chosen:
            if ks.spare_key_ref not in self._state.keys or ks.spare_cert_path not in self._state.files:
                return _r(SW.CONDITIONS_NOT_SATISFIED)
        if self._tear is not None:
            raise _Torn()  # the switch is one write: a power cut leaves the old state whole
        keys, files = self._state.keys, self._state.files
        for ks in chosen:
            live_k, spare_k = keys.pop(ks.key_ref, None), keys.pop(ks.spare_key_ref)
            keys[ks.key_ref] = spare_k
            if live_k is not None:
                keys[ks.spare_key_ref] = live_k
            live_f, spare_f = files.pop(ks.cert_path, None), files.pop(ks.spare_cert_path)
            files[ks.cert_path] = spare_f
            if live_f is not None:
                files[ks.spare_cert_path] = live_f
        self._current_ef = None
        self._env.clear()
        self._commit()
        return _r(SW.OK)

    def _erase_key(self, cmd: Command) -> Response:
        if cmd.p1 != 0x00:
            return _r(SW.INCORRECT_P1P2)
        if self.model.keyset_for_key(cmd.p2) is None:
            return _r(SW.REFERENCED_DATA_NOT_FOUND)
        if not self._admin:
            return _r(SW.SECURITY_STATUS_NOT_SATISFIED)
        if cmd.p2 in self._state.keys:
            if self._tear is not None:
                raise _Torn()
            del self._state.keys[cmd.p2]
            self._commit()
        return _r(SW.OK)

    @property
    def admin_key(self) -> bytes:
        """The issuer key the card holds now: its batch's transport key, or (PUT KEY done, or a card keyed
        at the factory) its own key, the model's TEST master key diversified with its serial."""
        held = self._state.extra.get("admin_key")
        return bytes.fromhex(held) if held else admin.card_key(self.model, self._state.serial)

    def _put_key(self, cmd: Command) -> Response:
        """PUT KEY (SCHEMA.md §4.1): the issuer key replaced by one sent wrapped (RFC 3394 AES key wrap)
        under the current one, after issuer authentication with it. One atomic state write: a torn or
        pulled card holds the old key or the new one, never another."""
        if cmd.p1 != 0x00:
            return _r(SW.INCORRECT_P1P2)
        if (cmd.p2 & 0x7F) != self.model.dialect.admin_key_ref:
            return _r(SW.REFERENCED_DATA_NOT_FOUND)
        if len(cmd.data) != 24:
            return _r(SW.WRONG_LENGTH)
        if not self._admin:
            return _r(SW.SECURITY_STATUS_NOT_SATISFIED)
        try:
            new = admin.unwrap(self.admin_key, cmd.data)
        except ValueError:
            return _r(SW.WRONG_DATA)
        self._state.extra["admin_key"] = new.hex()
        self._state.extra["admin_kvn"] = KVN_CARD
        self._admin = False          # authenticate again, with the new key
        self._commit()
        return _r(SW.OK)

    def _get_info(self, cmd: Command) -> Response:
        if cmd.p1 != 0x00:
            return _r(SW.INCORRECT_P1P2)
        if cmd.p2 == GET_INFO_ADMIN_KEY:
            return _r(SW.OK, bytes([self._state.extra.get("admin_kvn", KVN_CARD)]))
        if cmd.p2 == GET_INFO_EEPROM:
            total, used = self.model.eeprom.total_bytes, self.eeprom_used()
            return _r(SW.OK, b"".join(v.to_bytes(4, "big") for v in (total, used, total - used)))
        if cmd.p2 == GET_INFO_KEY_SLOTS:
            out = b""
            for ref in self.model.key_refs:
                k = self._state.keys.get(ref)
                out += bytes([ref]) + (k.bits if k else 0).to_bytes(2, "big")
            return _r(SW.OK, out)
        if cmd.p2 == GET_INFO_SERIAL:
            return _r(SW.OK, self._state.serial.encode("ascii"))
        return _r(SW.INCORRECT_P1P2)


def open_card(model: CardModel, **kwargs) -> EmulatedCard:
    """Convenience: a card, powered on."""
    card = EmulatedCard(model, **kwargs)
    card.power_on()
    return card


__all__ = ["EmulatedCard", "EmulatorError", "CardRemovedError", "CardNotPoweredError", "open_card"]
