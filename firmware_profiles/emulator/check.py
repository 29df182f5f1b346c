"""Conformance self-check of a card model on the in-process emulator
(``cns-emulator check``): the ISO behaviour OpenSC relies on, the dialect of
SCHEMA.md, renewal, persistence and EEPROM limits.

Owns only the check sequence; speaks raw APDUs to ``EmulatedCard``.
Imports: ``firmware_profiles`` and ``firmware_profiles.emulator.*``.
"""
from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


from firmware_profiles.emulator import admin
from firmware_profiles.emulator.card import EmulatedCard
from firmware_profiles.emulator.iso import SW
from firmware_profiles.model import CardModel


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str = ""


class _Fail(Exception):
    pass


class _Client:
    def __init__(self, card: EmulatedCard):
        self.card = card

    def raw(self, hexstr: str | bytes) -> tuple[bytes, int]:
        apdu = bytes.fromhex(hexstr) if isinstance(hexstr, str) else hexstr
        r = self.card.transmit(apdu)
        data, sw = r[:-2], int.from_bytes(r[-2:], "big")
        while sw >> 8 == 0x61:
            r = self.card.transmit(bytes([0, 0xC0, 0, 0, sw & 0xFF]))
            data, sw = data + r[:-2], int.from_bytes(r[-2:], "big")
        return data, sw

    def expect(self, hexstr: str | bytes, sw: int, what: str) -> bytes:
        data, got = self.raw(hexstr)
        if got != sw:
            raise _Fail(f"{what}: expected {SW.name_of(sw)}, got {SW.name_of(got)}")
        return data

    def admin(self) -> None:
        d = self.card.model.dialect
        rnd = self.expect("0084000010", SW.OK, "GET CHALLENGE")
        answer = admin.cryptogram(admin.card_key(self.card.model, self.card.serial), rnd)
        self.expect(bytes([0, 0x82, 0, d.admin_key_ref, 16]) + answer, SW.OK,
                    "EXTERNAL AUTHENTICATE")

    def select(self, path: str, sw: int = SW.OK) -> bytes:
        fids = bytes.fromhex(path.replace("/", ""))[2:]
        return self.expect(bytes([0, 0xA4, 8, 4, len(fids)]) + fids + b"\x00", sw, f"SELECT {path}")

    def codes(self) -> tuple[str, str]:
        m = self.card.model
        if m.pin_mode == "preset":
            return m.pin_policy.factory_test_pin, m.pin_policy.factory_test_puk
        return "24681357", "97531864"

    def block(self, code: str) -> bytes:
        pp = self.card.model.pin_policy
        return code.encode().ljust(pp.max_length, bytes([pp.pad_byte]))

    def send_chained(self, cla_ins_p1p2: bytes, data: bytes, le: int = 0) -> tuple[bytes, int]:
        parts = [data[i:i + 255] for i in range(0, len(data), 255)] or [b""]
        for part in parts[:-1]:
            _, sw = self.raw(bytes([cla_ins_p1p2[0] | 0x10]) + cla_ins_p1p2[1:] + bytes([len(part)]) + part)
            if sw != SW.OK:
                return b"", sw
        last = parts[-1]
        return self.raw(cla_ins_p1p2 + bytes([len(last)]) + last + bytes([le]))


def _pubkey(raw: bytes) -> tuple[int, int]:
    if raw[:2] != b"\x7f\x49":
        raise _Fail("public key answer does not start with 7F49")
    i = 3 + ((raw[2] & 0x7F) if raw[2] & 0x80 else 0)
    vals: dict[int, int] = {}
    while i < len(raw):
        tag, ln = raw[i], raw[i + 1]
        i += 2
        if ln & 0x80:
            k = ln & 0x7F
            ln, i = int.from_bytes(raw[i:i + k], "big"), i + k
        vals[tag] = int.from_bytes(raw[i:i + ln], "big")
        i += ln
    return vals[0x81], vals[0x82]


def run_checks(model: CardModel) -> list[CheckResult]:
    results: list[CheckResult] = []
    with tempfile.TemporaryDirectory(prefix="cns-check-") as tmp:
        state = Path(tmp) / "card.json"
        card = EmulatedCard(model, state_path=state)
        c = _Client(card)
        ctx: dict = {}

        def check(name: str, fn: Callable[[], str | None]) -> None:
            try:
                results.append(CheckResult(name, True, fn() or ""))
            except _Fail as exc:
                results.append(CheckResult(name, False, str(exc)))
            except Exception as exc:  # noqa: BLE001 - report, do not crash the check run
                results.append(CheckResult(name, False, f"{type(exc).__name__}: {exc}"))

        def atr():
            if card.power_on() != model.atr:
                raise _Fail("power_on() did not return the model's ATR")
        check("ATR on power on", atr)

        def idcarta():
            fcp = c.select(model.paths.id_carta)
            if fcp[:1] != b"\x62" or b"\x83\x02" + bytes.fromhex(model.paths.id_carta[-4:]) not in fcp:
                raise _Fail(f"FCP without 62/83: {fcp.hex()}")
            data = c.expect("00b00000ff", SW.END_OF_FILE, "READ BINARY past the end")
            if data.decode() != card.serial:
                raise _Fail("EF_IDCarta is not the serial")
            c.expect("00b0001000", SW.END_OF_FILE, "READ BINARY at the end")
            c.expect("00b0001100", SW.WRONG_P1P2, "READ BINARY beyond the end")
            return card.serial
        check("EF_IDCarta: FCP, READ BINARY answers 6282 at end of file", idcarta)

        def absent():
            for ks in model.keysets:
                c.select(ks.cert_path, SW.FILE_NOT_FOUND)
        check("blank card: absent certificates answer 6A82", absent)

        def iso_errors():
            c.expect("00ff0000", SW.INS_NOT_SUPPORTED, "unknown INS")
            c.expect("a0a40000023f00", SW.CLA_NOT_SUPPORTED, "bad CLA")
            c.expect("00a40000", SW.OK, "SELECT MF without data")
            c.expect("00a40000023f", SW.WRONG_LENGTH, "Lc longer than the data")
            c.expect("00a4000000", SW.OK, "Le only")
            c.expect("0ca4000c023f00", SW.SECURE_MESSAGING_NOT_SUPPORTED, "SM CLA")
            c.expect("00a4ff00023f00", SW.INCORRECT_P1P2, "bad P1")
        check("malformed APDUs get ISO status words", iso_errors)

        def admin_auth():
            c.expect("00460001", SW.SECURITY_STATUS_NOT_SATISFIED, "GENERATE without admin")
            rnd = c.expect("0084000010", SW.OK, "GET CHALLENGE")
            _, sw = c.raw(bytes([0, 0x82, 0, model.dialect.admin_key_ref, 16]) + bytes(16))
            if sw & 0xFFF0 != 0x63C0:
                raise _Fail(f"wrong cryptogram: expected 63Cx, got {sw:04X}")
            del rnd
            c.admin()
        check("issuer authentication (AES-128 challenge-response)", admin_auth)

        def personalize():
            pin, puk = c.codes()
            for ks in model.keysets:
                n, e = _pubkey(c.expect(bytes([0, 0x46, 0, ks.key_ref, 0]), SW.OK, "GENERATE"))
                if n.bit_length() != model.rsa_bits:
                    raise _Fail(f"{ks.name}: modulus of {n.bit_length()} bits")
                ctx[ks.name] = (n, e)
                c.select(ks.df)
                body = b"\x83\x02" + bytes.fromhex(ks.cert_path[-4:]) + b"\x82\x01\x01\x80\x02\x01\x00"
                c.expect(b"\x00\xe0\x00\x00" + bytes([len(body) + 2, 0x62, len(body)]) + body, SW.OK, "CREATE FILE")
                c.expect(b"\x00\xd6\x00\x00\xff" + bytes(range(255)), SW.OK, "UPDATE BINARY")
                if model.pin_mode == "set_at_personalization":
                    c.expect(b"\x00\x24\x01" + bytes([ks.pin_ref, 8]) + c.block(pin), SW.OK, "set PIN")
                    c.expect(b"\x00\x24\x01" + bytes([ks.puk_ref, 8]) + c.block(puk), SW.OK, "set PUK")
                else:
                    c.expect(b"\x00\x24\x01" + bytes([ks.pin_ref, 8]) + c.block(pin),
                             SW.CONDITIONS_NOT_SATISFIED, "preset codes cannot be set")
            return f"{len(model.keysets)} keysets"
        check("personalization: GENERATE, CREATE FILE, UPDATE BINARY, codes", personalize)

        def sign():
            pin, _ = c.codes()
            card.reset()
            k = model.rsa_bits // 8
            block = b"\x00\x01" + b"\xff" * (k - 3 - 32) + b"\x00" + bytes(range(32))
            for ks in model.keysets:
                n, e = ctx[ks.name]
                c.expect("0022f303", SW.OK, "MSE RESTORE")
                c.expect(bytes([0, 0x22, 0xF1, 0xB6, 3, 0x83, 1, ks.key_ref]), SW.OK, "MSE SET")
                _, sw = c.send_chained(b"\x00\x2a\x9e\x9a", block)
                if sw != SW.SECURITY_STATUS_NOT_SATISFIED:
                    raise _Fail(f"PSO without PIN: expected 6982, got {sw:04X}")
                c.expect(bytes([0, 0x20, 0, ks.pin_ref | 0x80, 8]) + c.block(pin), SW.OK, "VERIFY")
                sig, sw = c.send_chained(b"\x00\x2a\x9e\x9a", block)
                if sw != SW.OK or pow(int.from_bytes(sig, "big"), e, n) != int.from_bytes(block, "big"):
                    raise _Fail(f"{ks.name}: PSO CDS signature does not verify ({sw:04X})")
                c.expect(bytes([0, 0x22, 0xF1, 0xB8, 3, 0x83, 1, ks.key_ref]), SW.OK, "MSE SET decipher")
                sig, sw = c.send_chained(b"\x00\x2a\x80\x86", b"\x00" + block)
                if sw != SW.OK or pow(int.from_bytes(sig, "big"), e, n) != int.from_bytes(block, "big"):
                    raise _Fail(f"{ks.name}: PSO DECIPHER result wrong ({sw:04X})")
            card.reset()
            c.expect("0022f303", SW.OK, "MSE RESTORE")
            c.expect(bytes([0, 0x22, 0xF1, 0xB6, 3, 0x83, 1, model.keysets[0].key_ref]), SW.OK, "MSE SET")
            _, sw = c.send_chained(b"\x00\x2a\x9e\x9a", block)
            if sw != SW.SECURITY_STATUS_NOT_SATISFIED:
                raise _Fail("the PIN survived a reset")
            return "chained" if k > 255 else "single APDU"
        check("raw RSA through PSO CDS and DECIPHER; reset clears the PIN", sign)

        def pins():
            pin, puk = c.codes()
            ks = model.keysets[0]
            tries = ks.pin_tries
            c.expect(bytes([0, 0x20, 0, ks.pin_ref]), SW.VERIFY_FAILED | tries, "VERIFY status")
            for left in range(tries - 1, 0, -1):
                c.expect(bytes([0, 0x20, 0, ks.pin_ref, 8]) + c.block("00000000"), SW.VERIFY_FAILED | left,
                         "wrong PIN")
            c.expect(bytes([0, 0x20, 0, ks.pin_ref, 8]) + c.block("00000000"), SW.AUTH_METHOD_BLOCKED, "last wrong")
            c.expect(bytes([0, 0x20, 0, ks.pin_ref, 8]) + c.block(pin), SW.AUTH_METHOD_BLOCKED, "blocked")
            c.expect(bytes([0, 0x2C, 0, ks.pin_ref, 16]) + c.block("11111111") + c.block(pin),
                     SW.VERIFY_FAILED | (ks.puk_tries - 1), "wrong PUK")
            c.expect(bytes([0, 0x2C, 0, ks.pin_ref, 16]) + c.block(puk) + c.block(pin), SW.OK, "unblock")
            c.expect(bytes([0, 0x24, 0, ks.pin_ref, 16]) + c.block(pin) + c.block("13572468"), SW.OK, "change")
            c.expect(bytes([0, 0x24, 0, ks.pin_ref, 16]) + c.block("13572468") + c.block(pin), SW.OK, "change back")
        check("PIN counters: 63Cx, 6983, PUK unblock, change", pins)

        def renewal():
            pin, _ = c.codes()
            card.reset()
            c.admin()
            ks = model.keysets[-1]
            old = ctx[ks.name]
            new = _pubkey(c.expect(bytes([0, 0x46, 0, ks.spare_key_ref, 0]), SW.OK, "GENERATE spare"))
            c.select(ks.df)
            body = b"\x83\x02" + bytes.fromhex(ks.spare_cert_path[-4:]) + b"\x82\x01\x01\x80\x02\x00\x10"
            c.expect(b"\x00\xe0\x00\x00" + bytes([len(body) + 2, 0x62, len(body)]) + body, SW.OK, "CREATE spare")
            c.expect(b"\x00\xd6\x00\x00\x10" + b"N" * 16, SW.OK, "UPDATE spare cert")
            mask = 1 << model.keysets.index(ks)
            c.expect(bytes([0x80, model.dialect.ins_switch_keyset, 0, mask]), SW.OK, "SWITCH")
            live = _pubkey(c.expect(bytes([0, 0x46, 1, ks.key_ref, 0]), SW.OK, "read live key"))
            if live != new:
                raise _Fail("after SWITCH the live key is not the new one")
            c.select(ks.cert_path)
            if c.expect("00b0000010", SW.OK, "read live cert") != b"N" * 16:
                raise _Fail("after SWITCH the live certificate is not the new one")
            c.expect(bytes([0x80, model.dialect.ins_switch_keyset, 0, mask]), SW.OK, "SWITCH back")
            if _pubkey(c.expect(bytes([0, 0x46, 1, ks.key_ref, 0]), SW.OK, "read live")) != old:
                raise _Fail("SWITCH back did not restore the old key")
            c.expect(bytes([0x80, model.dialect.ins_erase_key, 0, ks.spare_key_ref]), SW.OK, "ERASE KEY")
            c.expect(bytes([0, 0x46, 1, ks.spare_key_ref, 0]), SW.REFERENCED_DATA_NOT_FOUND, "erased slot")
            c.select(ks.df)
            c.expect(b"\x00\xe4\x00\x00\x02" + bytes.fromhex(ks.spare_cert_path[-4:]), SW.OK, "DELETE spare cert")
            del pin
        check("renewal: spare key and certificate, atomic SWITCH, ERASE KEY", renewal)

        def persistence():
            before = card.state.to_json()
            again = EmulatedCard(model, state_path=state)
            if again.state.to_json() != before:
                raise _Fail("the state file does not give back the same card")
            return f"{state.stat().st_size} bytes"
        check("state file: a reloaded card is the same card", persistence)

        def eeprom():
            card.reset()
            c.admin()
            c.select("3F00/1000")
            created = 0
            while True:
                body = b"\x83\x02" + (0x5000 + created).to_bytes(2, "big") + b"\x82\x01\x01\x80\x02\x7f\xff"
                _, sw = c.raw(b"\x00\xe0\x00\x00" + bytes([len(body) + 2, 0x62, len(body)]) + body)
                if sw == SW.NOT_ENOUGH_MEMORY:
                    break
                if sw != SW.OK or created > 10:
                    raise _Fail(f"CREATE FILE answered {sw:04X} before the EEPROM was full")
                c.select("3F00/1000")
                created += 1
            return f"6A84 after {created} files of 32 KB; {card.eeprom_free()} bytes free"
        check("EEPROM budget: 6A84 when full", eeprom)
    return results
