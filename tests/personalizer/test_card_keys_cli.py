"""``cns-personalizer card-keys`` (issue 12): the production master keys made or unwrapped INSIDE a SoftHSM2 token.

What central IT relies on: ``init`` generates a model's master key in the token, sensitive and never
extractable (reading its value or wrapping it out of the token fails), and the token derives each card's key
from it; ``import`` unwraps a master key the card factory delivered wrapped under a key-encryption key of the
token, and the cards' keys derived from it are the factory's; neither overwrites an existing master; bad input
is one line; no key byte is ever printed.
"""
from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys

import pytest
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from firmware_profiles import load_models
from firmware_profiles.emulator import admin
from personalizer.cardadmin.keys import master_label
from personalizer.cardadmin.worker import TokenProcess
from tests.personalizer.helpers import VENV_BIN

MODEL = load_models()["infocamere-cns-2048"]
LABEL, PIN, KEK_LABEL = "cns-card-admin", "11223344", "factory-kek"
A, B = "ICMR000000000101", "ICMR000000000102"


@pytest.fixture
def hsm(tmp_path, softhsm2_module):
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
    subprocess.run(["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--pin", PIN, "--so-pin",
                    "55667788"], check=True, capture_output=True, timeout=60, env=env)
    kek = secrets.token_bytes(16)
    _p11(softhsm2_module, env, f"""
s.create_object({{Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.VALUE: {kek!r},
                 Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.LABEL: {KEK_LABEL!r},
                 Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.UNWRAP: True,
                 Attribute.WRAP: True, Attribute.ENCRYPT: False, Attribute.DECRYPT: False}})
print("ok")""")
    (tmp_path / "pin").write_text(PIN + "\n")
    (tmp_path / "pin").chmod(0o600)
    cfg = tmp_path / "personalizer.toml"
    cfg.write_text(f'[card_admin]\npkcs11_module = "{softhsm2_module}"\ntoken_label = "{LABEL}"\n'
                   f'pin_file = "pin"\nsofthsm2_conf = "softhsm2.conf"\n')
    return cfg, conf, env, kek


def _p11(module, env, body: str) -> str:
    """``body`` run with session ``s`` open on the token, in a fresh process (SoftHSM2 reads its config once)."""
    script = ("import pkcs11\nfrom pkcs11 import Attribute, KeyType, Mechanism, ObjectClass\n"
              f"with pkcs11.lib({str(module)!r}).get_token(token_label={LABEL!r}).open(rw=True, user_pin={PIN!r}) as s:\n"
              + "".join("    " + line + "\n" for line in body.strip().splitlines()))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _cli(cfg, *args):
    return subprocess.run([str(VENV_BIN / "cns-personalizer"), "card-keys", *args, "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)


def _module(cfg) -> str:
    return cfg.read_text().split('pkcs11_module = "')[1].split('"')[0]


def _export_attempts(module, env, label: str) -> str:
    """Try to get the key out as anyone with the token PIN would: read CKA_VALUE, wrap it under another key."""
    return _p11(module, env, f"""
from pkcs11.exceptions import PKCS11Error
key = s.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label={label!r})
out = []
try:
    out.append("VALUE READ " + bytes(key[Attribute.VALUE]).hex())
except PKCS11Error as exc:
    out.append("value refused " + type(exc).__name__)
kek = s.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label={KEK_LABEL!r})
try:
    out.append("WRAPPED OUT " + kek.wrap_key(key, mechanism=Mechanism.AES_KEY_WRAP).hex())
except PKCS11Error as exc:
    out.append("wrap refused " + type(exc).__name__)
print(";".join(out))""")


def test_init_generates_the_master_inside_the_token_and_never_lets_it_out(hsm, softhsm2_module):
    cfg, conf, env, _ = hsm
    r = _cli(cfg, "status", "--json")
    assert r.returncode == 0, r.stderr
    assert {row["model"]: row["present"] for row in json.loads(r.stdout)["master_keys"]}[MODEL.id] is False
    r = _cli(cfg, "init", "--model", MODEL.id, "--json")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)["master_keys"]
    assert row["model"] == MODEL.id and row["label"] == master_label(MODEL.id)
    assert row["sensitive"] and not row["extractable"] and row["never_extractable"] and row["generated_in_token"]
    assert row["derive"] and not row["encrypt"] and not row["wrap"]
    attempts = _export_attempts(softhsm2_module, env, master_label(MODEL.id))
    assert "value refused" in attempts and "wrap refused" in attempts, attempts
    # the token derives each card's own key from it: the same card answers the same, another card differently
    token = TokenProcess(module=_module(cfg), token_label=LABEL, pin=PIN, softhsm2_conf=conf)
    try:
        challenge = secrets.token_bytes(16)
        ask = lambda serial: token.cryptogram(model_id=MODEL.id, scheme=MODEL.dialect.admin_key_scheme,  # noqa: E731
                                              serial=serial, challenge=challenge)
        assert ask(A) == ask(A) != ask(B)
        assert ask(A) != admin.cryptogram(admin.card_key(MODEL, A), challenge)   # not the TEST master
    finally:
        token.close()
    # a second init would orphan every card keyed under the first: refused, the master unchanged
    again = _cli(cfg, "init", "--model", MODEL.id)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "never overwritten" in again.stderr
    r = _cli(cfg, "status")
    assert r.returncode == 0 and f"{MODEL.id}: master key {master_label(MODEL.id)}, generated in the token, " \
                                  "sensitive, never extractable, derive only" in r.stdout, r.stdout


def test_import_unwraps_the_factorys_master_inside_the_token(hsm, softhsm2_module, tmp_path):
    cfg, conf, env, kek = hsm
    master = secrets.token_bytes(16)
    wrapped = tmp_path / "master.wrapped"
    wrapped.write_text(aes_key_wrap(kek, master).hex() + "\n")
    bad = tmp_path / "bad.wrapped"
    bad.write_text(aes_key_wrap(secrets.token_bytes(16), master).hex())
    r = _cli(cfg, "import", "--model", MODEL.id, "--wrapped", str(bad), "--unwrapping-key", KEK_LABEL)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "does not unwrap" in r.stderr, r.stderr
    r = _cli(cfg, "import", "--model", MODEL.id, "--wrapped", str(wrapped), "--unwrapping-key", "no-such-kek")
    assert r.returncode == 1 and "no AES key-encryption key labelled 'no-such-kek'" in r.stderr, r.stderr
    short = tmp_path / "short.wrapped"
    short.write_text("00" * 16)
    r = _cli(cfg, "import", "--model", MODEL.id, "--wrapped", str(short), "--unwrapping-key", KEK_LABEL)
    assert r.returncode == 1 and "48 hexadecimal digits" in r.stderr, r.stderr
    r = _cli(cfg, "import", "--model", "no-such-model", "--wrapped", str(wrapped), "--unwrapping-key", KEK_LABEL)
    assert r.returncode == 1 and "unknown card model 'no-such-model'" in r.stderr, r.stderr

    r = _cli(cfg, "import", "--model", MODEL.id, "--wrapped", str(wrapped), "--unwrapping-key", KEK_LABEL, "--json")
    assert r.returncode == 0, r.stderr
    [row] = json.loads(r.stdout)["master_keys"]
    assert row["sensitive"] and not row["extractable"] and not row["generated_in_token"]
    assert master.hex() not in r.stdout + r.stderr
    attempts = _export_attempts(softhsm2_module, env, master_label(MODEL.id))
    assert "value refused" in attempts and "wrap refused" in attempts, attempts
    # the cards the factory keyed with this master's diversified keys are answered by the token
    token = TokenProcess(module=_module(cfg), token_label=LABEL, pin=PIN, softhsm2_conf=conf)
    try:
        challenge = secrets.token_bytes(16)
        card_key = admin._aes_ecb(master, A.encode())   # the factory's K_card = AES-128-ECB(master, serial)
        assert token.cryptogram(model_id=MODEL.id, scheme=MODEL.dialect.admin_key_scheme, serial=A,
                                challenge=challenge) == admin.cryptogram(card_key, challenge)
    finally:
        token.close()
    r = _cli(cfg, "import", "--model", MODEL.id, "--wrapped", str(wrapped), "--unwrapping-key", KEK_LABEL)
    assert r.returncode == 1 and "never overwritten" in r.stderr


def test_card_keys_without_a_card_admin_section_says_what_to_add(tmp_path):
    cfg = tmp_path / "personalizer.toml"
    cfg.write_text("[server]\n")
    r = _cli(cfg, "status")
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "no [card_admin] section" in r.stderr, r.stderr
