"""Card models load, validate and identify; broken files get a message naming file, key and expectation."""
from __future__ import annotations

import pytest

from firmware_profiles import CARDS_DIR, ProfileError, identify, load_model, load_models, parse_atr

MODELS = load_models()
INFOCAMERE_ATR = bytes.fromhex("3BFF1800FF8131FE55006B02090200011101434E531131808E")


def test_two_models_one_per_key_size():
    assert {m.rsa_bits for m in MODELS.values()} == {1024, 2048}
    assert {m.pin_mode for m in MODELS.values()} == {"preset", "set_at_personalization"}
    for m in MODELS.values():
        assert m.eeprom_bytes == 65536
        assert m.pin_policy.min_length == m.pin_policy.max_length == 8
        assert [k.name for k in m.keysets] == ["CNS0", "CNS1"]
        assert all(k.pin_tries == 3 and k.spare_key_ref not in (k.key_ref,) for k in m.keysets)
        assert m.paths.id_carta == "3F00/1000/1003" and m.paths.dati_personali == "3F00/1100/1102"
        assert m.timing["realistic"].sign_seconds[m.rsa_bits] < 4
        assert parse_atr(m.atr).tck_ok
        assert m.cns_version == {1024: 0x10, 2048: 0x11}[m.rsa_bits]


def test_identify_by_atr():
    assert identify(INFOCAMERE_ATR, MODELS).id == "infocamere-cns-2048"
    assert identify(bytes.fromhex("3B8F8001804F0CA000000306030001000000006A"), MODELS) is None


def test_keyset_refs_match_opensc():
    m = MODELS["infocamere-cns-2048"]
    cns0, cns1 = m.keysets
    assert (cns0.key_ref, cns0.pin_ref, cns0.puk_ref, cns0.cert_path) == (0x01, 0x10, 0x11, "3F00/1100/1101")
    assert (cns1.key_ref, cns1.pin_ref, cns1.puk_ref, cns1.cert_path) == (0x10, 0x1A, 0x1B, "3F00/1400/9010")
    assert cns1.pin_df == "3F00/1400/8110"
    assert m.keyset_for_key(cns1.spare_key_ref) is cns1


def _broken(tmp_path, old: str, new: str, name: str = "x.toml"):
    text = (CARDS_DIR / "infocamere-cns-2048.toml").read_text()
    assert old in text
    p = tmp_path / name
    p.write_text(text.replace(old, new, 1))
    return p


@pytest.mark.parametrize("old,new,key,expected", [
    ("pin_tries = 3", 'pin_tries = "three"', "pin_policy.pin_tries", "an integer 1..15"),
    ("31 80 8E", "31 80 8F", "atr", "a correct TCK (it should be 8E)"),
    ("43 4E 53 11 31 80 8E", "43 4E 53 10 31 80 8F", "atr", "CNS version byte 10 for RSA-1024"),
    ('\npin_mode = "preset"', '\npin_mode = "sometimes"', "pin_mode", 'one of "preset"'),
    ("total_bytes = 65536", "total_bytes = 1024", "eeprom.total_bytes", "an integer 4096"),
    ('cert = "3F00/1100/1101"', 'cert = "3F00/99/1101"', "keysets[0].cert", "a file path"),
    ("spare_key_ref = 0x12", "spare_key_ref = 0x01", "keysets[1].spare_key_ref", "a key reference no other"),
    ('admin_test_master_key = "00112233445566778899AABBCCDDEEFF"', 'admin_test_master_key = "0011"',
     "dialect.admin_test_master_key", "16 bytes"),
    ('admin_key_scheme = "aes128-ecb-serial"', 'admin_key_scheme = "sp800-108"', "dialect.admin_key_scheme",
     'one of "aes128-ecb-serial"'),
    ("sign_seconds = { 1024 = 0.35, 2048 = 1.4 }", "sign_seconds = { 1024 = 0.35, 2048 = 4.5 }",
     "timing.realistic.sign_seconds", "under 4 s"),
])
def test_profile_errors_name_file_key_and_expectation(tmp_path, old, new, key, expected):
    with pytest.raises(ProfileError) as err:
        load_model(_broken(tmp_path, old, new))
    e = err.value
    assert e.key == key and expected in e.expected, str(e)
    assert str(e).startswith(f"{tmp_path / 'x.toml'}: {key}: expected ")


def test_message_format_for_a_wrong_type(tmp_path):
    with pytest.raises(ProfileError) as err:
        load_model(_broken(tmp_path, "pin_tries = 3", 'pin_tries = "three"'))
    assert str(err.value).endswith('pin_policy.pin_tries: expected an integer 1..15, got "three"')


def test_missing_key_and_bad_toml(tmp_path):
    with pytest.raises(ProfileError, match=r"rsa_bits: expected 1024 or 2048 \(missing\)"):
        load_model(_broken(tmp_path, "rsa_bits = 2048\n", ""))
    bad = tmp_path / "bad.toml"
    bad.write_text("id = [")
    with pytest.raises(ProfileError, match="valid TOML"):
        load_model(bad)


def test_duplicate_ids_in_a_folder(tmp_path):
    for name in ("a.toml", "b.toml"):
        (tmp_path / name).write_text((CARDS_DIR / "oberthur-cns-1024.toml").read_text())
    with pytest.raises(ProfileError, match="an id no other model uses"):
        load_models(tmp_path)


def test_models_are_frozen():
    m = MODELS["oberthur-cns-1024"]
    with pytest.raises(AttributeError):
        m.rsa_bits = 2048  # type: ignore[misc]


def test_firmware_profiles_imports_nothing_of_ours():
    import ast
    from pathlib import Path

    root = CARDS_DIR.parent
    for py in root.rglob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for n in names:
                assert n.split(".")[0] not in ("agent", "personalizer", "proto", "tests", "station_config"), (py, n)
    assert Path(root / "SCHEMA.md").exists()
