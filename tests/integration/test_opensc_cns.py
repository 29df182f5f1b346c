"""OpenSC is the judge: emulated CNS cards of every model, personalized with
the dialect (tests/support/cardprep.py) and inserted into a private pcscd
through vpcd, must be read, logged into and used for signing by opensc-tool,
pkcs15-tool, pkcs11-tool and python-pkcs11 (through opensc-pkcs11.so), with
signatures that openssl verifies. Also: wrong PINs (63C2, 63C1, 6983) as
OpenSC drives them, PUK unblock, and a torn UPDATE BINARY over PC/SC.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from firmware_profiles.emulator.vpcd import VpcdClient, parse_address
from tests.support import cardprep
from tests.support.vpcd import pull

pytestmark = [pytest.mark.pcscd, pytest.mark.opensc]

MODELS = load_models()
DATA = b"OpenSC is the judge of the emulated CNS\n"
OPENSC_CONF = """app default {
    debug = 0;
    framework pkcs15 {
        use_file_caching = false;
        use_pin_caching = false;
    }
}
"""


@dataclass
class Served:
    model: object
    card: EmulatedCard
    client: VpcdClient
    prep: cardprep.Personalized
    env: dict
    workdir: Path
    apdu_log: Path

    def run(self, *argv: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} → {r.returncode}\n{r.stdout}\n{r.stderr}")
        return r

    def sws(self, ins: int) -> list[str]:
        out = []
        for line in self.apdu_log.read_text().splitlines():
            rec = json.loads(line)
            if rec["r"] and int(rec["c"][2:4], 16) == ins:
                out.append(rec["r"][-4:].upper())
        return out


def _wait_for_atr(env: dict, atr: bytes, timeout: float = 10) -> None:
    want = atr.hex(":").upper()
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        r = subprocess.run(["opensc-tool", "-r", "0", "-a"], env=env, capture_output=True, text=True, timeout=20)
        out = r.stdout + r.stderr
        if want in out.upper().replace(" ", ":"):
            return
        time.sleep(0.2)
    raise AssertionError(f"the reader never showed ATR {want}: {out}")


@pytest.fixture(scope="module", params=sorted(MODELS))
def served(request, pcscd, opensc_tools, tmp_path_factory):
    model = MODELS[request.param]
    workdir = tmp_path_factory.mktemp(f"opensc-{model.id}")
    apdu_log = workdir / "apdu.jsonl"
    card = EmulatedCard(model, state_path=workdir / "card.json", apdu_log=apdu_log)
    prep = cardprep.personalize(card)
    conf = workdir / "opensc.conf"
    conf.write_text(OPENSC_CONF)
    env = dict(pcscd.env, OPENSC_CONF=str(conf))
    host, port = parse_address(pcscd.vpcd_address(0))
    client = VpcdClient(card, host, port).start()
    assert client.inserted.wait(10), "the card never connected to vpcd"
    _wait_for_atr(env, model.atr)
    yield Served(model, card, client, prep, env, workdir, apdu_log)
    pull(client, "Virtual PCD 00 00")   # pcscd has seen it go before the next card comes


def _pem(s: Served, name: str) -> Path:
    path = s.workdir / f"{name}.pem"
    path.write_bytes(s.prep.certs[name].public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


def test_opensc_tool_names_a_cns_card(served):
    out = served.run("opensc-tool", "-r", "0", "-n").stdout
    assert "CNS card" in out


def test_pkcs15_tool_lists_both_keysets_and_the_holder(served):
    out = served.run("pkcs15-tool", "-D").stdout
    for name in ("CNS0", "CNS1"):
        assert f"X.509 Certificate [{name}]" in out
        assert f"Private RSA Key [{name}]" in out
        assert f"PIN {name}" in out
    assert f"ModLength      : {served.model.rsa_bits}" in out
    assert "MARIO ROSSI" in out
    assert served.card.serial in out  # EF_IDCarta as the token serial


def test_pkcs15_tool_reads_back_the_certificates(served):
    for name, cid in (("CNS0", "01"), ("CNS1", "10")):
        pem = served.run("pkcs15-tool", "--read-certificate", cid).stdout
        der = served.prep.certs[name].public_bytes(serialization.Encoding.PEM).decode()
        assert der.strip() in pem


def test_pkcs11_tool_lists_two_tokens(served, opensc_tools):
    out = served.run("pkcs11-tool", "--module", str(opensc_tools), "-L").stdout
    assert "MARIO ROSSI (PIN CNS0)" in out and "MARIO ROSSI (PIN CNS1)" in out


@pytest.mark.parametrize("index,name,key_id", [(0, "CNS0", "01"), (1, "CNS1", "10")])
def test_pkcs11_tool_signs_and_openssl_verifies(served, opensc_tools, index, name, key_id):
    data = served.workdir / "data.txt"
    data.write_bytes(DATA)
    sig = served.workdir / f"sig-{name}.bin"
    served.run("pkcs11-tool", "--module", str(opensc_tools), "--slot-index", str(index), "--login",
               "--pin", served.prep.pin, "--sign", "-m", "SHA256-RSA-PKCS", "--id", key_id,
               "-i", str(data), "-o", str(sig))
    assert len(sig.read_bytes()) == served.model.rsa_bits // 8
    r = served.run("openssl", "dgst", "-sha256", "-verify", str(_pem(served, name)), "-signature", str(sig),
                   str(data))
    assert "Verified OK" in r.stdout


PKCS11_SCRIPT = r"""
import sys, pkcs11
from pkcs11 import Mechanism, ObjectClass
lib = pkcs11.lib(sys.argv[1])
out = {}
for slot in lib.get_slots(token_present=True):
    token = slot.get_token()
    label = token.label
    name = "CNS0" if label.endswith("(PIN CNS0)") else "CNS1" if label.endswith("(PIN CNS1)") else None
    if name is None:
        continue
    with token.open(user_pin=sys.argv[2]) as session:
        key = next(session.get_objects({pkcs11.Attribute.CLASS: ObjectClass.PRIVATE_KEY}))
        out[name] = key.sign(sys.argv[3].encode(), mechanism=Mechanism.SHA256_RSA_PKCS).hex()
print(repr(out))
"""


def test_python_pkcs11_signs_through_opensc(served, opensc_tools):
    r = served.run(sys.executable, "-c", PKCS11_SCRIPT, str(opensc_tools), served.prep.pin, DATA.decode())
    sigs = eval(r.stdout.strip().splitlines()[-1])  # noqa: S307 - our own script's repr of a dict of hex
    assert set(sigs) == {"CNS0", "CNS1"}
    for name, sig in sigs.items():
        served.prep.certs[name].public_key().verify(bytes.fromhex(sig), DATA, padding.PKCS1v15(), hashes.SHA256())


def test_wrong_pins_count_down_block_and_puk_unblocks(served, opensc_tools):
    """Last on purpose: it blocks CNS0's PIN (then unblocks it with the PUK)."""
    pin_ref = served.model.keysets[0].pin_ref
    before = len(served.sws(0x20))
    for _ in range(3):
        r = served.run("pkcs11-tool", "--module", str(opensc_tools), "--slot-index", "0", "--login",
                       "--pin", "00000000", "--list-objects", check=False)
        assert r.returncode != 0
    sws = served.sws(0x20)[before:]
    assert [sw for sw in sws if sw != "9000"][-3:] == ["63C2", "63C1", "6983"], sws
    assert served.card.state.pins[pin_ref].tries_left == 0
    r = served.run("pkcs11-tool", "--module", str(opensc_tools), "--slot-index", "0", "--login",
                   "--pin", served.prep.pin, "--list-objects", check=False)
    assert r.returncode != 0 and "CKR_PIN_LOCKED" in (r.stdout + r.stderr)
    served.run("pkcs15-tool", "--unblock-pin", "--auth-id", "01", "--puk", served.prep.puk,
               "--new-pin", served.prep.pin)
    assert "9000" in served.sws(0x2C)
    assert served.card.state.pins[pin_ref].tries_left == served.model.keysets[0].pin_tries
    served.run("pkcs11-tool", "--module", str(opensc_tools), "--slot-index", "0", "--login",
               "--pin", served.prep.pin, "--list-objects")


def test_torn_update_binary_over_pcsc(pcscd, tmp_path):
    """A power cut mid-write over the real stack: the state file holds the first N bytes, the
    card leaves the reader, comes back as the same card with no issuer rights."""
    from firmware_profiles.emulator import admin
    from smartcard.Exceptions import CardConnectionException
    from smartcard.System import readers

    model = MODELS["oberthur-cns-1024"]
    state = tmp_path / "card.json"
    card = EmulatedCard(model, state_path=state, faults=["tear:ins=D6,bytes=7"])
    host, port = parse_address(pcscd.vpcd_address(1))
    client = VpcdClient(card, host, port, reinsert_after=1.0).start()
    try:
        assert client.inserted.wait(10)
        reader = next(r for r in readers() if str(r).startswith(pcscd.reader_names[1]))

        def connect():
            deadline = time.monotonic() + 10
            while True:
                try:
                    conn = reader.createConnection()
                    conn.connect()
                    return conn
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)

        def tx(conn, apdu: bytes):
            data, sw1, sw2 = conn.transmit(list(apdu))
            return bytes(data), (sw1 << 8) | sw2

        conn = connect()
        rnd, sw = tx(conn, bytes.fromhex("0084000010"))
        assert sw == 0x9000
        answer = admin.cryptogram(admin.card_key(model, card.serial), rnd)
        assert tx(conn, bytes([0, 0x82, 0, model.dialect.admin_key_ref, 16]) + answer)[1] \
            == 0x9000
        assert tx(conn, bytes.fromhex("00a4080c0411001102"))[1] == 0x9000
        with pytest.raises(CardConnectionException):
            tx(conn, bytes.fromhex("00d6000010") + b"TORN-WRITE-DATA!")
        try:
            conn.disconnect()
        except Exception:
            pass
        stored = bytes.fromhex(json.loads(state.read_text())["files"][model.paths.dati_personali]["data"])
        assert stored[:16] == b"TORN-WR" + bytes(9)
        assert client.connections == 1
        deadline = time.monotonic() + 10
        while client.connections < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.connections == 2, "the card was not reinserted"
        conn = connect()
        assert tx(conn, bytes.fromhex("00a4080c0411001102"))[1] == 0x9000
        assert tx(conn, bytes.fromhex("00b0000010")) == (b"TORN-WR" + bytes(9), 0x9000)
        assert tx(conn, bytes.fromhex("00d6000001ff"))[1] == 0x6982  # issuer rights did not survive
        conn.disconnect()
    finally:
        client.stop()
