"""The tender conformance run (§5.2.1.2) on one card, over an ``ApduTransport``.

``run(transport, model, ...)`` measures the card, never its model file: the
model only gives paths, references and the dialect. What it checks, in order:

    eeprom        EEPROM capacity ≥ 64 KB (proprietary GET DATA, SCHEMA.md §4.5)
    pin_block     the PIN blocks after 3 wrong tries: exercised on a blank test card
                  (wrong PIN ×3, then unblocked with the PUK and the PIN restored),
                  otherwise read from the card's status answer without counting a try
    pin_length    PIN and PUK of 8 digits: the codes the card accepts, and the card
                  refuses a 6-digit new PIN (put back at once if it took it)
    rsa_keygen    RSA-1024 and RSA-2048 generated on the card (into CNS0's renewal spare
                  slot, erased at the end; the live keys are never touched). A key found
                  there with no renewal marker set is what a pulled card left: erased first;
                  with the marker set it belongs to a renewal and the check is not run
    sha256        a SHA-256 PKCS#1 v1.5 signature made by the card verifies
    sign_time     a 2048-bit signature in at most 4 s (median of N, APDUs included)
    symmetric     AES-128 (issuer authentication) and 3DES where the card exposes them
    opensc        OpenSC recognises the card as a CNS (its itacns driver)

Every check is ``pass``, ``fail`` (naming the clause and what was measured) or
``not run`` with the reason; the report says whether the run was destructive.
A card that answers nonsense fails the check that got the answer with what it
answered; a wrong PIN or PUK, or a card pulled mid-run, stops the run at once
(``ConformanceError``: one line). Whatever stops the run, the test key is erased
from the spare slot and the PIN counter restored when the card still answers:
nothing is left half written. PINs and PUKs never reach a message.

Imports ``agent.card`` and ``cryptography``; no I/O but the transport.
"""
from __future__ import annotations

import hashlib
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from agent.card.apdu import CLA_ISO, INS, SW, Apdu, sw_name, tries_left
from agent.card.cns import CnsSession, _pin_block
from agent.card.errors import (
    ApduError,
    CardError,
    CardRemovedError,
    FileNotFoundOnCardError,
    MalformedResponseError,
    ReaderError,
)
from agent.card.issuer import IssuerSession, check_key_size, parse_public_key

CLAUSE = "§5.2.1.2"
PASS, FAIL, NOT_RUN = "pass", "fail", "not run"
REQUIRED_DIGITS = 8
REQUIRED_TRIES = 3
REQUIRED_EEPROM = 64 * 1024
MAX_SIGN_SECONDS = 4.0
DEFAULT_SAMPLES = 5
MAX_SAMPLES = 50
SHORT_PIN = "135792"           # a 6-digit code the card must refuse as a new PIN
GET_INFO_EEPROM = 0x01
SHA256_DIGEST_INFO = bytes.fromhex("3031300d060960864801650304020105000420")
MESSAGE = b"cns-agent conformance: tender 5.2.1.2 SHA-256 signature"

REQUIREMENTS = {
    "eeprom": "EEPROM capacity of at least 64 KB",
    "pin_block": "PIN blocked after 3 wrong tries",
    "pin_length": "PIN and PUK of 8 digits",
    "rsa_keygen": "RSA 1024 and 2048 key generation on the card",
    "sha256": "SHA-256 signatures",
    "sign_time": "a 2048-bit signature in at most 4 s",
    "symmetric": "AES-128 and 3DES (where the card exposes them)",
    "opensc": "OpenSC reads the card as a CNS",
}


class ConformanceError(Exception):
    """The run cannot go on (wrong code, card pulled, not a CNS card); one line for the user."""


class Cancelled(ConformanceError):
    """The operator cancelled the run; it stopped between two card commands and cleaned up."""


@dataclass
class Check:
    id: str
    status: str
    detail: str
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def requirement(self) -> str:
        return REQUIREMENTS[self.id]

    @property
    def clause(self) -> str:
        return f"{CLAUSE} ({self.requirement})"

    def as_dict(self) -> dict:
        return {"id": self.id, "clause": self.clause, "requirement": self.requirement, "status": self.status,
                "detail": self.detail, "figures": dict(self.figures)}


@dataclass
class Report:
    reader: str
    card_serial: str
    model_id: str
    mode: str
    checks: list[Check]
    seconds: float = 0.0
    left_on_card: list[str] = field(default_factory=list)   # what the run could not undo (normally empty)

    @property
    def conforming(self) -> bool:
        return not any(c.status == FAIL for c in self.checks) and not self.left_on_card

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAIL]

    def as_dict(self) -> dict:
        return {"reader": self.reader, "card_serial": self.card_serial, "model_id": self.model_id,
                "mode": self.mode, "conforming": self.conforming, "seconds": round(self.seconds, 3),
                "checks": [c.as_dict() for c in self.checks], "left_on_card": list(self.left_on_card)}


OpenscProbe = Callable[[str], tuple[str, str]]   # reader → (status, detail)


def _not_in_process(reader: str) -> tuple[str, str]:
    return NOT_RUN, "the card is not reached through PC/SC in this run, so OpenSC cannot open it"


def _other_code(code: str) -> str:
    return "".join(str((int(c) + 1) % 10) for c in code)


def _pkcs1_sha256(message: bytes, key_bytes: int) -> bytes:
    t = SHA256_DIGEST_INFO + hashlib.sha256(message).digest()
    return b"\x00\x01" + b"\xff" * (key_bytes - 3 - len(t)) + b"\x00" + t


class _Run:
    def __init__(self, transport, model, *, reader: str, pin: str, puk: str, admin_key,
                 admin_key_problem: str, samples: int, opensc: OpenscProbe, progress, clock, cancelled):
        self.cns = CnsSession(transport, model)
        self.issuer = IssuerSession(self.cns, model)
        self.model, self.reader = model, reader
        self.pin, self.puk = pin, puk
        self.admin_key, self.admin_key_problem = admin_key, admin_key_problem
        self.samples, self.opensc, self.clock = samples, opensc, clock
        self.cancelled = cancelled or (lambda: False)
        self.progress = progress or (lambda step, message: None)
        self.keyset = model.keysets[0]
        self.pinref = self.cns.layout.pins[self.keyset.name]
        self.checks: list[Check] = []
        self.test_key_ref: int | None = None     # spare slot holding our test key, to erase
        self.test_key = None
        self.pin_blocked_by_us = False
        self.aes_ok: bool | None = None
        self.pin_ok = False
        self.puk_verified = False
        self.destructive = False
        self.no_pin = "" if pin else "no PIN given"

    # -- plumbing ------------------------------------------------------------------------
    def send(self, apdu: Apdu) -> tuple[bytes, int]:
        return self.cns.transport.transmit(apdu.encode_long())

    def add(self, cid: str, status: str, detail: str, **figures: float) -> None:
        self.checks.append(Check(cid, status, detail, figures))
        self.progress(cid, f"{status}: {detail}")

    def stop_if_cancelled(self) -> None:
        if self.cancelled():
            raise Cancelled("the conformance run was cancelled; the card was put back as it was "
                            "(test key erased, PIN counter full)")

    def guarded(self, cid: str, fn: Callable[[], None]) -> None:
        self.stop_if_cancelled()
        self.progress(cid, REQUIREMENTS[cid])
        try:
            fn()
        except (CardRemovedError, ReaderError, ConformanceError):
            raise
        except (MalformedResponseError, ApduError) as exc:
            self.add(cid, FAIL, f"the card answered what {CLAUSE} does not allow here: {exc}")
        except CardError as exc:
            self.add(cid, FAIL, f"card error: {exc}")

    def select_pin_df(self) -> None:
        if self.pinref.df:
            self.cns.select(self.pinref.df)

    def verify(self, code: str, ref: int) -> int:
        self.select_pin_df()
        _, sw = self.send(Apdu(CLA_ISO, INS.VERIFY, 0, ref, _pin_block(code, "code")))
        return sw

    def verify_pin_or_stop(self) -> None:
        sw = self.verify(self.pin, self.pinref.pin_ref)
        if sw == SW.OK:
            self.pin_ok = True
            return
        left = tries_left(sw)
        if left is not None:
            raise ConformanceError(f"the card refused the PIN ({left} tries left): give the card's PIN; "
                                   "the run stopped before anything else was tried")
        if sw == SW.AUTH_METHOD_BLOCKED:
            raise ConformanceError("the card's PIN is blocked: unblock it with the PUK (`cns-agent pin unblock`) "
                                   "and run again")
        raise ApduError(sw, "VERIFY PIN")

    # -- checks --------------------------------------------------------------------------
    def eeprom(self) -> None:
        d = self.model.dialect
        data, sw = self.send(Apdu(d.cla_proprietary, d.ins_get_info, 0, GET_INFO_EEPROM, le=256))
        if sw in (SW.INS_NOT_SUPPORTED, SW.INCORRECT_P1P2, SW.CLA_NOT_SUPPORTED, SW.FUNCTION_NOT_SUPPORTED):
            self.add("eeprom", NOT_RUN, f"the card does not report its EEPROM capacity ({sw_name(sw)}); "
                                        "check the manufacturer's data sheet")
            return
        if sw != SW.OK:
            raise ApduError(sw, "GET DATA (EEPROM)")
        if len(data) != 12:
            raise MalformedResponseError(f"EEPROM information of {len(data)} bytes, expected 12")
        total, used, free = (int.from_bytes(data[i:i + 4], "big") for i in (0, 4, 8))
        if used + free != total:
            raise MalformedResponseError(f"EEPROM figures do not add up (total {total}, used {used}, free {free})")
        ok = total >= REQUIRED_EEPROM
        self.add("eeprom", PASS if ok else FAIL,
                 f"{total} bytes of EEPROM ({total // 1024} KB), {free} free"
                 + ("" if ok else f"; {CLAUSE} requires at least {REQUIRED_EEPROM} bytes"),
                 total_bytes=total, free_bytes=free)

    def pin_status(self) -> int | None:
        """Tries left on the PIN, asked without counting one (None: the card does not tell)."""
        self.select_pin_df()
        _, sw = self.send(Apdu(CLA_ISO, INS.VERIFY, 0, self.pinref.pin_ref))
        if sw == SW.AUTH_METHOD_BLOCKED:
            raise ConformanceError("the card's PIN is blocked: unblock it with the PUK (`cns-agent pin unblock`) "
                                   "and run again")
        if sw == SW.REFERENCE_DATA_NOT_USABLE:    # a blank card of a model that sets codes at personalization
            self.no_pin = "the card has no PIN yet (its model sets the codes at personalization)"
            self.pin = self.puk = ""
            return None
        return tries_left(sw)

    def pin_block(self, blank: bool, status_left: int | None) -> None:
        why_not = ""
        if not blank:
            why_not = "the card is not blank (personalized cards are never blocked on purpose)"
        elif self.no_pin:
            why_not = self.no_pin
        elif not self.puk:
            why_not = "no PUK given (it is needed to unblock the card afterwards)"
        elif len(self.pin) != REQUIRED_DIGITS or len(self.puk) != REQUIRED_DIGITS:
            why_not = "the codes are not 8 digits, so the card might not take them back in an unblock"
        elif self.pinref.puk_ref is None:
            why_not = "the model names no PUK for the PIN"
        if not why_not:
            sw = self.verify(self.puk, self.pinref.puk_ref)
            self.puk_verified = sw == SW.OK
            if sw != SW.OK:
                left = tries_left(sw)
                if left is not None:
                    raise ConformanceError(f"the card refused the PUK ({left} tries left): give the card's PUK; "
                                           "the run stopped before anything else was tried")
                why_not = f"the card does not verify a PUK on its own ({sw_name(sw)}), so it could not be " \
                          "unblocked safely"
        if why_not:
            self.pin_block_status(status_left, why_not)
            return
        self.verify_pin_or_stop()               # full counter before counting wrong tries
        self.destructive = True
        wrong, answers = _other_code(self.pin), []
        for _ in range(REQUIRED_TRIES):
            sw = self.verify(wrong, self.pinref.pin_ref)
            answers.append(sw)
            if sw == SW.AUTH_METHOD_BLOCKED:
                self.pin_blocked_by_us = True
                break
            if tries_left(sw) is None:
                raise ApduError(sw, "VERIFY with a wrong PIN")
            if len(answers) == REQUIRED_TRIES:
                break
        blocked_after = len(answers) if self.pin_blocked_by_us else None
        if self.pin_blocked_by_us:
            after_right = self.verify(self.pin, self.pinref.pin_ref)
        self.restore_pin()
        shown = ", ".join(f"{sw:04X}" for sw in answers)
        mode = "exercised on a blank test card, then unblocked with the PUK"
        if blocked_after == REQUIRED_TRIES and after_right == SW.AUTH_METHOD_BLOCKED:
            self.add("pin_block", PASS, f"blocked after {REQUIRED_TRIES} wrong PINs ({shown}); the right PIN was "
                                        f"refused while blocked; {mode}", wrong_tries_to_block=REQUIRED_TRIES)
        elif blocked_after is None:
            self.add("pin_block", FAIL, f"not blocked after {REQUIRED_TRIES} wrong PINs ({shown}); {CLAUSE} "
                                        f"requires blocking after {REQUIRED_TRIES}; {mode}")
        elif blocked_after != REQUIRED_TRIES:
            self.add("pin_block", FAIL, f"blocked after {blocked_after} wrong PIN(s) ({shown}); {CLAUSE} requires "
                                        f"blocking after {REQUIRED_TRIES}; {mode}", wrong_tries_to_block=blocked_after)
        else:
            self.add("pin_block", FAIL, f"blocked after {REQUIRED_TRIES} wrong PINs but the right PIN then answered "
                                        f"{sw_name(after_right)}; {mode}")

    def pin_block_status(self, left: int | None, why_not: str) -> None:
        head = f"non-destructive: blocking not exercised ({why_not}); "
        if left is None:
            self.add("pin_block", NOT_RUN, head + "the card does not tell the tries left")
        elif left == REQUIRED_TRIES:
            self.add("pin_block", PASS, head + f"the card reports {left} tries left before any wrong PIN",
                     tries_left=left)
        elif left > REQUIRED_TRIES:
            self.add("pin_block", FAIL, head + f"the card reports {left} tries left; {CLAUSE} requires blocking "
                                               f"after {REQUIRED_TRIES}", tries_left=left)
        else:
            self.add("pin_block", NOT_RUN, head + f"the card reports {left} tries left: tries were used since the "
                                                  "last right PIN, so the maximum is unknown; enter the PIN right "
                                                  "once and run again", tries_left=left)

    def restore_pin(self) -> None:
        """Undo the blocking test: unblock with the PUK (same PIN), or reset the counter with the right PIN."""
        if self.pin_blocked_by_us:
            self.select_pin_df()
            data = _pin_block(self.puk, "PUK") + _pin_block(self.pin, "PIN")
            _, sw = self.send(Apdu(CLA_ISO, INS.RESET_RETRY_COUNTER, 0, self.pinref.pin_ref, data))
            if sw != SW.OK:
                raise ConformanceError(f"the card did not unblock the PIN with the PUK ({sw_name(sw)}): unblock it "
                                       "with `cns-agent pin unblock`")
            self.pin_blocked_by_us = False
        if self.verify(self.pin, self.pinref.pin_ref) != SW.OK:
            raise ConformanceError("the card did not take its PIN back after the blocking test: unblock it with "
                                   "`cns-agent pin unblock`")
        self.pin_ok = True

    def pin_length(self) -> None:
        if not self.pin:
            self.add("pin_length", NOT_RUN, self.no_pin)
            return
        if not self.pin_ok:
            self.verify_pin_or_stop()
        problems, notes = [], []
        if len(self.pin) != REQUIRED_DIGITS:
            problems.append(f"the card's PIN has {len(self.pin)} digits")
        if self.puk:
            if len(self.puk) != REQUIRED_DIGITS:
                problems.append(f"the PUK given has {len(self.puk)} digits")
            else:
                notes.append("PUK of 8 digits given" + (" and verified" if self.puk_verified else
                                                          " (not presented to a personalized card)"))
        else:
            notes.append("no PUK given: its length not checked")
        self.select_pin_df()
        data = _pin_block(self.pin, "PIN") + _pin_block(SHORT_PIN, "PIN")
        _, sw = self.send(Apdu(CLA_ISO, INS.CHANGE_REFERENCE_DATA, 0, self.pinref.pin_ref, data))
        if sw == SW.OK:
            self.select_pin_df()
            back = _pin_block(SHORT_PIN, "PIN") + _pin_block(self.pin, "PIN")
            _, sw2 = self.send(Apdu(CLA_ISO, INS.CHANGE_REFERENCE_DATA, 0, self.pinref.pin_ref, back))
            if sw2 != SW.OK:
                raise ConformanceError(f"the card took a 6-digit PIN and did not take the old one back "
                                       f"({sw_name(sw2)}): its PIN is now the test code {SHORT_PIN}; change it")
            problems.append("the card accepted a 6-digit new PIN (put back at once)")
        elif tries_left(sw) is not None or sw == SW.AUTH_METHOD_BLOCKED:
            raise ApduError(sw, "CHANGE REFERENCE DATA refused the PIN it had just verified")
        else:
            notes.append(f"a 6-digit new PIN refused ({sw_name(sw)})")
        if problems:
            self.add("pin_length", FAIL, "; ".join(problems) + f"; {CLAUSE} requires {REQUIRED_DIGITS} digits",
                     pin_digits=len(self.pin))
        else:
            self.add("pin_length", PASS, "PIN of 8 digits verified; " + "; ".join(notes), pin_digits=len(self.pin))

    def rsa_keygen(self) -> None:
        if self.admin_key is None:
            self.add("rsa_keygen", NOT_RUN, f"no issuer key: {self.admin_key_problem}")
            return
        slot = self.keyset.spare_key_ref
        stale = self.issuer.read_public_key(slot) is not None
        if stale and self.renewal_in_progress():
            self.add("rsa_keygen", NOT_RUN, f"the spare slot {slot:02X} holds the key of a renewal in progress: "
                                            "finish it (`cns-agent renew`) and run again")
            return
        try:
            self.issuer.authenticate(self.admin_key)
        except ApduError as exc:
            if tries_left(exc.sw) is not None or exc.sw == SW.AUTH_METHOD_BLOCKED:
                raise ConformanceError(f"the card refused the issuer key for model {self.model.id} "
                                       f"({sw_name(exc.sw)}): check the personalizer's card administration "
                                       "master key for this model; the run stopped before anything was "
                                       "written") from None
            raise
        self.aes_ok = True
        made, refused, figures = [], [], {}
        if stale:   # no renewal owns it: what an interrupted run (card pulled) left; renewal would overwrite it
            self.issuer.erase_key(slot)
            made.append(f"a stale key in the spare slot {slot:02X} erased first")
        for bits in (1024, 2048):
            t0 = self.clock()
            data, sw = self.send(Apdu(CLA_ISO, INS.GENERATE_ASYMMETRIC_KEY_PAIR, 0, slot,
                                      bytes([0x80, 0x02]) + bits.to_bytes(2, "big"), le=256))
            if sw == SW.OK:
                self.test_key_ref = slot
                key = check_key_size(parse_public_key(data), bits, f"slot {slot:02X}")
                figures[f"keygen_{bits}_seconds"] = round(self.clock() - t0, 3)
                made.append(f"RSA-{bits} in {figures[f'keygen_{bits}_seconds']:.1f} s")
                if bits == 2048:
                    self.test_key = key
            elif sw in (SW.WRONG_DATA, SW.INCORRECT_P1P2, SW.FUNCTION_NOT_SUPPORTED):
                refused.append(f"RSA-{bits} refused ({sw_name(sw)})")
            else:
                raise ApduError(sw, f"GENERATE RSA-{bits}")
        where = f"in the spare slot {slot:02X}, erased afterwards"
        if refused:
            self.add("rsa_keygen", FAIL, "; ".join(made + refused) + f" {where}", **figures)
        else:
            self.add("rsa_keygen", PASS, "; ".join(made) + f" {where}", **figures)

    def renewal_in_progress(self) -> bool:
        """The renewal marker (SCHEMA.md §5) is set, or the model has none (then a spare key is never ours)."""
        marker = getattr(self.model.paths, "renewal_marker", None)
        if not marker:
            return True
        data = self.issuer.read_ef(marker)
        return data is None or any(data)

    def signing_key(self):
        """(key ref, public key) of a 2048-bit key to sign with: our test key, else the live CNS0 key."""
        if self.test_key is not None:
            return self.test_key_ref, self.test_key, "the test key"
        live = self.issuer.read_public_key(self.keyset.key_ref)
        if live is not None:
            return self.keyset.key_ref, live, f"the live {self.keyset.name} key"
        return None, None, ""

    def sha256(self) -> None:
        if not self.pin_ok:
            self.add("sha256", NOT_RUN, f"{self.no_pin}: the card signs only after the PIN")
            return
        ref, key, which = self.signing_key()
        if key is None:
            self.add("sha256", NOT_RUN, "no key on the card to sign with (no issuer key to generate one)")
            return
        self.cns.verify_pin(self.pin, self.keyset.name)
        block = _pkcs1_sha256(MESSAGE, key.key_size // 8)
        sig = self.issuer.raw_sign(self.keyset, ref, block)
        try:
            key.verify(sig, MESSAGE, padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            self.add("sha256", FAIL, f"the SHA-256 signature made with {which} does not verify")
            return
        self.add("sha256", PASS, f"SHA-256 PKCS#1 v1.5 signature with {which} ({key.key_size} bits) verifies")

    def sign_time(self) -> None:
        if not self.pin_ok:
            self.add("sign_time", NOT_RUN, f"{self.no_pin}: the card signs only after the PIN")
            return
        ref, key, which = self.signing_key()
        if key is None or key.key_size != 2048:
            self.add("sign_time", NOT_RUN, "no 2048-bit key on the card to time (no issuer key to generate one)")
            return
        block = _pkcs1_sha256(MESSAGE, 256)
        times = []
        for i in range(self.samples):
            self.stop_if_cancelled()
            self.cns.verify_pin(self.pin, self.keyset.name)
            t0 = self.clock()
            self.issuer.raw_sign(self.keyset, ref, block)
            times.append(self.clock() - t0)
            self.progress("sign_time", f"signature {i + 1}/{self.samples}: {times[-1]:.3f} s")
        median = statistics.median(times)
        figures = {"median_seconds": round(median, 4), "min_seconds": round(min(times), 4),
                   "max_seconds": round(max(times), 4), "samples": len(times)}
        text = f"median {median:.3f} s of {len(times)} signatures with {which} (min {min(times):.3f}, " \
               f"max {max(times):.3f})"
        if median <= MAX_SIGN_SECONDS:
            self.add("sign_time", PASS, text, **figures)
        else:
            self.add("sign_time", FAIL, text + f"; {CLAUSE} requires at most {MAX_SIGN_SECONDS:.0f} s", **figures)

    def symmetric(self) -> None:
        declared = set(self.model.algorithms)
        parts, status = [], PASS
        if self.aes_ok:
            parts.append("AES-128: issuer authentication (challenge-response) succeeded")
        elif "AES-128" not in declared:
            parts.append("AES-128: the card's dialect does not use it")
            status = FAIL
        else:
            parts.append(f"AES-128: not exercised ({self.admin_key_problem or 'no issuer authentication'})")
            status = NOT_RUN
        parts.append("3DES: the card exposes no 3DES operation through its APDUs; not tested"
                     + ("" if "3DES" in declared else " (nor does its model declare it)"))
        self.add("symmetric", status, "; ".join(parts))

    def opensc_check(self) -> None:
        status, detail = self.opensc(self.reader)
        self.add("opensc", status, detail)

    def cleanup(self) -> list[str]:
        """Erase the test key; put the PIN back. Returns what could not be undone."""
        left = []
        if self.pin_blocked_by_us:
            try:
                self.restore_pin()
            except (CardError, ConformanceError) as exc:
                left.append(f"the PIN stays blocked ({exc})")
        if self.test_key_ref is not None:
            try:
                self.issuer.authenticate(self.admin_key)
                self.issuer.erase_key(self.test_key_ref)
                self.test_key_ref = None
            except CardError as exc:
                left.append(f"the test key stays in the spare slot {self.test_key_ref:02X} ({exc}); the next "
                            "conformance run erases it (a renewal overwrites it)")
        return left


def run(transport, model, *, reader: str = "", pin: str = "", puk: str = "", admin_key=None,
        admin_key_problem: str = "", samples: int = DEFAULT_SAMPLES, opensc: OpenscProbe | None = None,
        progress: Callable[[str, str], None] | None = None, clock: Callable[[], float] = time.monotonic,
        cancelled: Callable[[], bool] | None = None) -> Report:
    """Run every check on the card behind ``transport`` (see the module docstring). ``cancelled()`` is
    asked between card operations: when it turns true the run cleans up and raises ``Cancelled``."""
    for name, code in (("PIN", pin), ("PUK", puk)):
        if code and not (code.isascii() and code.isdigit() and 4 <= len(code) <= 8):
            raise ConformanceError(f"the {name} must be 4 to 8 digits; nothing was sent to the card")
    if not 1 <= samples <= MAX_SAMPLES:
        raise ConformanceError(f"samples must be 1..{MAX_SAMPLES}, got {samples}")
    r = _Run(transport, model, reader=reader, pin=pin, puk=puk, admin_key=admin_key,
             admin_key_problem=admin_key_problem, samples=samples, opensc=opensc or _not_in_process,
             progress=progress, clock=clock, cancelled=cancelled)
    t0 = clock()
    try:
        serial = r.cns.read_serial()
        blank = r.cns.read_personal_data() is None
        for ks in model.keysets:
            try:
                r.cns.select(ks.cert_path)
                blank = False
            except FileNotFoundOnCardError:
                pass
        status_left = r.pin_status()
    except (CardRemovedError, ReaderError):
        raise ConformanceError(f"the card left {reader or 'the reader'} before the run started: reinsert it "
                               "and run again; nothing was written") from None
    except CardError as exc:
        raise ConformanceError(f"the card in {reader or 'the reader'} does not answer as a CNS card ({exc}); "
                               "nothing was written") from None
    try:
        r.guarded("eeprom", r.eeprom)
        r.guarded("pin_block", lambda: r.pin_block(blank, status_left))
        r.guarded("pin_length", r.pin_length)
        r.guarded("rsa_keygen", r.rsa_keygen)
        r.guarded("sha256", r.sha256)
        r.guarded("sign_time", r.sign_time)
        r.guarded("symmetric", r.symmetric)
        r.guarded("opensc", r.opensc_check)
    except (CardRemovedError, ReaderError) as exc:
        raise ConformanceError(f"the card left {reader or 'the reader'} during the run ({exc}): reinsert it; "
                               "a test key left in its spare slot is erased by the next conformance run "
                               "(a renewal overwrites it)") from None
    finally:
        try:
            undone = r.cleanup()
        except (CardRemovedError, ReaderError) as exc:
            undone = [f"the card left before the test key was erased ({exc})"]
        if undone:
            r.progress("cleanup", "; ".join(undone))
    mode = ("full: a blank test card; the PIN was blocked on purpose and unblocked with the PUK" if r.destructive
            else "non-destructive: " + ("the PIN was not blocked on purpose (see pin_block)" if blank else
                                        "a personalized card is never blocked on purpose"))
    return Report(reader=reader, card_serial=serial, model_id=model.id, mode=mode, checks=r.checks,
                  seconds=clock() - t0, left_on_card=undone)
