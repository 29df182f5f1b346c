"""APDU recordings for tests: make them, and replay them in both directions.

- ``replay_against_card(card, recording)``: send a recording's commands to an
  emulated card and check every answer is the recorded one (for a recording
  made at the card side, e.g. OpenSC through pcscd: the emulator's
  ``apdu_log``).
- ``personalize_flow`` / ``renew_flow``: the card-layer sequence of a
  personalization and of a renewal (the same ``CnsSession``/``IssuerSession``
  calls in the order of the ``agent.ops.personalize``/``renew`` plans, with the
  CA replaced by a callback; the ops engine itself needs the personalizer, and a
  replay must not). Run over a ``RecordingTransport`` they record; run
  over a ``ReplayTransport`` with the recording's inputs they replay.
- ``python -m tests.support.replay OUTDIR`` (``scripts/record-apdus``) writes
  the committed fixtures (tests/fixtures/apdu/).

Randomness: the card's random numbers (GET CHALLENGE, generated key pairs)
are in the recorded responses, so a replay serves the same ones; what the CA
returned (certificates) is stored in the recording's ``meta`` line and fed
back in. PIN data is redacted (``**``) and matches any PIN of the same length.

Tests only: imports the agent's card layer, ``agent.ops.csr``/``renew`` (CSR, marker) and the emulator.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from agent.card.cns import CnsSession
from agent.card.issuer import IssuerSession
from agent.card.transport import Recording, RecordingTransport, ReplayDivergence
from agent.ops.csr import build_csr, pkcs1_v15_sha256_block
from agent.ops.renew import marker_bytes
from firmware_profiles.emulator.admin import SoftwareAuthenticator

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "apdu"
MODEL_ID = "oberthur-cns-1024"  # the smaller keys keep recordings short; its PINs are set at personalization
TEST_PIN, TEST_PUK = "24681357", "97531864"
SUBJECT = [("country_name", "IT"), ("serial_number", "TINIT-RSSMRA80A01H501U"), ("given_name", "MARIO"),
           ("surname", "ROSSI"), ("common_name", "ROSSI MARIO")]
RENEWAL_OP_ID = "00000000-0000-4000-8000-00000000cafe"  # the renewal's operation id (marker, request ids)
Issue = Callable[[str, bytes], bytes]  # (keyset name, CSR DER) -> certificate DER


def _spki(key) -> str:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo).hex()


def _open(transport, model) -> tuple[CnsSession, IssuerSession]:
    cns = CnsSession(transport, model)
    return cns, IssuerSession(cns, model)


def personalize_flow(transport, model, *, dati_personali: bytes, pin: str, puk: str, issue: Issue) -> dict:
    """Blank card → personalized: the card calls of ``agent.ops.personalize`` in its plan's order
    (read serial, blank check, [set-codes], generate-key:*, csr:*, submit:*, write-dati-personali,
    write-cert:*, verify). Returns what the card gave (serial, public keys, CSRs, test signatures)."""
    cns, issuer = _open(transport, model)
    admin = SoftwareAuthenticator(model)
    out: dict = {"serial": cns.read_serial(), "pubkeys": {}, "csrs": {}, "signatures": {}}
    for ks in model.keysets:                                     # precheck: the card is blank
        assert issuer.read_ef(ks.cert_path) is None, f"{ks.name} certificate already on the card"
    if model.pin_mode == "set_at_personalization":
        issuer.authenticate(admin)                               # set-codes
        for ks in model.keysets:
            issuer.set_code(ks.pin_ref, pin, "PIN")
            issuer.set_code(ks.puk_ref, puk, "PUK")
    pubs = {}
    for ks in model.keysets:                                     # generate-key:*
        issuer.authenticate(admin)
        pubs[ks.name] = issuer.generate_key(ks.key_ref, model.rsa_bits)
        out["pubkeys"][ks.name] = _spki(pubs[ks.name])
    csrs = {}
    for ks in model.keysets:                                     # csr:*
        slot = issuer.read_public_key(ks.key_ref)
        assert slot is not None and slot.public_numbers() == pubs[ks.name].public_numbers()
        cns.verify_pin(pin, ks.name)
        csrs[ks.name] = build_csr(pubs[ks.name], SUBJECT, lambda block, ks=ks: issuer.raw_sign(ks, ks.key_ref, block))
        out["csrs"][ks.name] = csrs[ks.name].hex()
    certs = {ks.name: issue(ks.name, csrs[ks.name]) for ks in model.keysets}   # submit:*
    issuer.authenticate(admin)                                   # write-dati-personali
    cns.update_binary(model.paths.dati_personali, dati_personali)
    for ks in model.keysets:                                     # write-cert:*
        issuer.authenticate(admin)
        issuer.write_ef(ks.cert_path, certs[ks.name])
    for ks in model.keysets:                                     # verify
        assert issuer.read_ef(ks.cert_path) == certs[ks.name]
        cert = x509.load_der_x509_certificate(certs[ks.name])
        assert issuer.read_public_key(ks.key_ref).public_numbers() == cert.public_key().public_numbers()
        cns.verify_pin(pin, ks.name)
        block = pkcs1_v15_sha256_block(b"replay test signature " + ks.name.encode(), cert.public_key().key_size // 8)
        out["signatures"][ks.name] = issuer.raw_sign(ks, ks.key_ref, block).hex()
    assert cns.read_file(model.paths.dati_personali)[:len(dati_personali)] == dati_personali
    return out


def renew_flow(transport, model, *, pin: str, issue: Issue, op_id: str = RENEWAL_OP_ID) -> dict:
    """Personalized card → renewed: the card calls of ``agent.ops.renew`` in its plan's order (read
    serial, precheck, [mark], generate-key:* and csr:* in the spare slots, renew:*, write-cert:*,
    verify, switch, cleanup, [unmark])."""
    cns, issuer = _open(transport, model)
    admin = SoftwareAuthenticator(model)
    marker = model.paths.renewal_marker
    out: dict = {"serial": cns.read_serial(), "pubkeys": {}, "csrs": {}, "pops": {}}
    current = {}
    for ks in model.keysets:                                     # precheck
        der = issuer.read_ef(ks.cert_path)
        assert der is not None, f"no {ks.name} certificate: not personalized"
        current[ks.name] = x509.load_der_x509_certificate(der)
        assert issuer.read_public_key(ks.key_ref).public_numbers() == \
            current[ks.name].public_key().public_numbers()
    out["holder"] = cns.read_personal_data().holder_label
    for ks in model.keysets:
        cns.verify_pin(pin, ks.name)
    marker_size = len(cns.read_file(marker)) if marker else 0
    if marker:                                                   # mark
        issuer.authenticate(admin)
        cns.update_binary(marker, marker_bytes(op_id, marker_size))
    pubs = {}
    for ks in model.keysets:                                     # generate-key:* (spare slots)
        issuer.authenticate(admin)
        pubs[ks.name] = issuer.generate_key(ks.spare_key_ref, current[ks.name].public_key().key_size)
        out["pubkeys"][ks.name] = _spki(pubs[ks.name])
    csrs = {}
    for ks in model.keysets:                                     # csr:* with the proof of possession
        assert issuer.read_public_key(ks.spare_key_ref).public_numbers() == pubs[ks.name].public_numbers()
        cns.verify_pin(pin, ks.name)
        csrs[ks.name] = build_csr(pubs[ks.name], SUBJECT,
                                  lambda block, ks=ks: issuer.raw_sign(ks, ks.spare_key_ref, block))
        nbytes = (current[ks.name].public_key().key_size + 7) // 8
        rid = f"renew-{op_id}-{ks.name}".encode()
        pop = issuer.raw_sign(ks, ks.key_ref, pkcs1_v15_sha256_block(rid + csrs[ks.name], nbytes))
        out["csrs"][ks.name], out["pops"][ks.name] = csrs[ks.name].hex(), pop.hex()
    certs = {ks.name: issue(ks.name, csrs[ks.name]) for ks in model.keysets}   # renew:*
    for ks in model.keysets:                                     # write-cert:* (spare files)
        issuer.authenticate(admin)
        issuer.write_ef(ks.spare_cert_path, certs[ks.name])
    for ks in model.keysets:                                     # verify, with a test signature
        assert issuer.read_ef(ks.spare_cert_path) == certs[ks.name]
        new = x509.load_der_x509_certificate(certs[ks.name])
        assert issuer.read_public_key(ks.spare_key_ref).public_numbers() == new.public_key().public_numbers()
        cns.verify_pin(pin, ks.name)
        block = pkcs1_v15_sha256_block(b"replay renewal signature " + ks.name.encode(), new.public_key().key_size // 8)
        out.setdefault("signatures", {})[ks.name] = issuer.raw_sign(ks, ks.spare_key_ref, block).hex()

    def live_side() -> str:                                      # as Renewer._where: old, new or other
        sides = set()
        for ks in model.keysets:
            der = issuer.read_ef(ks.cert_path)
            side = "new" if der == certs[ks.name] else "old" if der == current_der[ks.name] else "other"
            if side != "other":
                key = x509.load_der_x509_certificate(der).public_key()
                if issuer.read_public_key(ks.key_ref).public_numbers() != key.public_numbers():
                    side = "other"
            sides.add(side)
        return sides.pop() if len(sides) == 1 else "other"
    current_der = {n: c.public_bytes(serialization.Encoding.DER) for n, c in current.items()}
    assert live_side() == "old"                                  # switch
    issuer.authenticate(admin)
    issuer.switch_keysets(sum(1 << i for i in range(len(model.keysets))))
    assert live_side() == "new", "the new certificates are not live"
    assert live_side() == "new"                                  # cleanup: never erase what is live
    issuer.authenticate(admin)
    for ks in model.keysets:
        issuer.erase_key(ks.spare_key_ref)
        issuer.delete_ef(ks.spare_cert_path)
    if marker:                                                   # unmark
        issuer.authenticate(admin)
        cns.update_binary(marker, bytes(marker_size))
    return out


def replay_against_card(card, recording: Recording) -> int:
    """Send every recorded command to ``card`` (powered here) and require the recorded answer.
    Returns the number of exchanges; raises ``ReplayDivergence`` naming the first line that differs."""
    if not card.powered:
        card.power_on()
    for e in recording.exchanges:
        where = f"{recording.source}:{e.line}"
        if "**" in e.command:
            raise ReplayDivergence(f"{where}: a redacted (PIN) command cannot be sent to a card")
        got = card.transmit(bytes.fromhex(e.command))
        if got != e.response:
            raise ReplayDivergence(f"{where}: the card answered {got.hex()} to {e.command}, "
                                   f"the recording has {e.response.hex() if e.response else None}")
    return len(recording.exchanges)


# ------------------------------------------------------------------------------- making recordings
def _model():
    from firmware_profiles import load_models
    return load_models()[MODEL_ID]


def _fresh_card(model):
    from firmware_profiles.emulator import CardRemovedError, EmulatedCard
    from tests.support.emulated import EmulatedTransport
    card = EmulatedCard(model)
    card.power_on()
    return card, EmulatedTransport(card, (CardRemovedError,))


def _test_ca_issue(certs: dict[str, str]) -> Issue:
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    from tests.support.cardprep import TestCA
    ca = TestCA.create()

    def issue(ks_name: str, csr: bytes) -> bytes:
        req = x509.load_der_x509_csr(csr)
        pub = load_der_public_key(req.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo))
        der = ca.issue(pub, cn="ROSSI MARIO", usage="auth" if ks_name == "CNS0" else "sign").public_bytes(
            serialization.Encoding.DER)
        certs[ks_name] = der.hex()
        return der
    return issue


def dati_personali() -> bytes:
    from tests.support.cardprep import dati_personali as dp
    return dp("MARIO", "ROSSI")


def record_personalization(path: Path) -> Recording:
    model = _model()
    _card, transport = _fresh_card(model)
    rec, certs = RecordingTransport(transport), {}
    out = personalize_flow(rec, model, dati_personali=dati_personali(), pin=TEST_PIN, puk=TEST_PUK,
                           issue=_test_ca_issue(certs))
    recording = rec.recording({"kind": "personalization", "model": MODEL_ID,
                               "inputs": {"dati_personali": dati_personali().hex(), "certs": certs},
                               "outputs": out})
    recording.save(path)
    return Recording.load(path)


def record_renewal(path: Path) -> Recording:
    model = _model()
    card, transport = _fresh_card(model)
    personalize_flow(transport, model, dati_personali=dati_personali(), pin=TEST_PIN, puk=TEST_PUK,
                     issue=_test_ca_issue({}))
    rec, certs = RecordingTransport(transport), {}
    out = renew_flow(rec, model, pin=TEST_PIN, issue=_test_ca_issue(certs))
    recording = rec.recording({"kind": "renewal", "model": MODEL_ID, "inputs": {"certs": certs},
                               "outputs": out})
    recording.save(path)
    return Recording.load(path)


OPENSC_CONF = 'app default { framework pkcs15 { use_file_caching = false; use_pin_caching = false; } }\n'


def record_opensc(path: Path, snapshot_path: Path, workdir: Path, commands: list[list[str]]) -> Recording:
    """OpenSC reads a personalized emulated card through a private pcscd + vpcd; the emulator logs
    every APDU at the card side. Saves the card's state before (``snapshot_path``) and the exchanges."""
    from firmware_profiles.emulator import EmulatedCard
    from firmware_profiles.emulator.vpcd import VpcdClient, parse_address
    from tests.support import cardprep
    from tests.support.pcscd import start_pcscd

    model = _model()
    card = EmulatedCard(model)
    card.power_on()
    cardprep.personalize(card)
    snapshot = card.snapshot()
    log = workdir / "apdu.jsonl"
    served = EmulatedCard(model, apdu_log=log)
    served.restore(snapshot)
    pcscd = start_pcscd(workdir / "pcscd")
    conf = workdir / "opensc.conf"
    conf.write_text(OPENSC_CONF)
    env = dict(pcscd.env, OPENSC_CONF=str(conf))
    host, port = parse_address(pcscd.vpcd_address(0))
    client = VpcdClient(served, host, port).start()
    try:
        if not client.inserted.wait(10):
            raise SystemExit("record-apdus: the emulated card never connected to vpcd")
        deadline = time.monotonic() + 10
        while model.atr.hex(":").upper() not in subprocess.run(
                ["opensc-tool", "-r", "0", "-a"], env=env, capture_output=True, text=True).stdout.upper():
            if time.monotonic() > deadline:
                raise SystemExit("record-apdus: the reader never showed the card's ATR")
            time.sleep(0.2)
        log.write_text("")  # only what the recorded commands send
        for argv in commands:
            r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
            if r.returncode:
                raise SystemExit(f"record-apdus: {' '.join(argv)} failed: {r.stderr.strip()}")
    finally:
        client.stop()
        pcscd.stop()
    recording = Recording.load(log)
    recording.meta = {"kind": "opensc", "model": MODEL_ID, "commands": [" ".join(c) for c in commands],
                      "card_state": snapshot_path.name}
    recording.save(path)
    snapshot_path.write_text(json.dumps(snapshot, sort_keys=True, indent=1) + "\n")
    return Recording.load(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="record-apdus", description="Write the APDU recordings of tests/fixtures/apdu.")
    ap.add_argument("outdir", nargs="?", type=Path, default=FIXTURES)
    ap.add_argument("--only", choices=["personalization", "renewal", "opensc"], action="append")
    args = ap.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)
    which = args.only or ["personalization", "renewal", "opensc"]
    made = []
    if "personalization" in which:
        made.append(record_personalization(args.outdir / "personalization.jsonl"))
    if "renewal" in which:
        made.append(record_renewal(args.outdir / "renewal.jsonl"))
    if "opensc" in which:
        import shutil
        import tempfile

        from tests.support.pcscd import missing_tools
        missing = missing_tools() + (["pkcs15-tool (apt-get install opensc)"] if not shutil.which("pkcs15-tool")
                                     else [])
        if missing:
            print(f"record-apdus: the OpenSC recording needs {', '.join(missing)}; "
                  "or record only the others with --only personalization --only renewal", file=sys.stderr)
            return 2
        with tempfile.TemporaryDirectory(prefix="record-apdus-") as tmp:
            made.append(record_opensc(args.outdir / "opensc-read.jsonl", args.outdir / "opensc-read.card.json",
                                      Path(tmp), [["pkcs15-tool", "--dump"],
                                                  ["pkcs15-tool", "--read-certificate", "01"]]))
    for r in made:
        print(f"{r.source}: {len(r.exchanges)} exchanges ({r.meta['kind']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
