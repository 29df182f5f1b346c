"""Unit tests of the pure parts: codice fiscale, EF_DatiPersonali, config floors."""
from __future__ import annotations

import pytest

from personalizer import codice_fiscale as cf, config, dati_personali

from personalizer.rules import validation
from personalizer.errors import ConfigError


@pytest.mark.parametrize("code", ["RSSMRA80A01H501U", "RSSMRA80A01H5LMX", "rssmra80a01h501u"])
def test_valid_codes(code):
    assert cf.is_valid(code)


def test_omocodia_restores_digits():
    parsed = cf.parse("RSSMRA80A01H5LMX")
    assert parsed.canonical == "RSSMRA80A01H501X" and parsed.municipality == "H501"


def test_female_birth_day():
    code = cf.make("RSSMRA80A41H501")
    parsed = cf.parse(code)
    assert parsed.female and parsed.birth_day == 1


@pytest.mark.parametrize("code,reason", [
    ("RSSMRA80A01H501X", "wrong check character 'X', expected 'U'"),
    ("RSSMRA80A01H501", "must be 16 characters"),
    ("RSSMRA8XA01H501U", "malformed"),
    (cf.make("RSSMRA80Z01H501"), "invalid month letter 'Z'"),
    (cf.make("RSSMRA80A32H501"), "invalid birth day"),
])
def test_invalid_codes(code, reason):
    with pytest.raises(cf.CodiceFiscaleError) as ei:
        cf.parse(code)
    assert reason in ei.value.reason


def test_dati_personali_round_trip_and_hash_length():
    dp = dati_personali.DatiPersonali(issuer="CCIAA", surname="Rossi", given_name="Mario", birth_date="01011980",
                                      codice_fiscale="RSSMRA80A01H501U")
    raw = dati_personali.encode(dp)
    assert dati_personali.decode(raw) == dp
    assert len(dati_personali.cn_hash(raw)) == 28
    with pytest.raises(dati_personali.DatiPersonaliError):
        dati_personali.decode(raw[:-3])


def test_config_refuses_qualified_below_its_floor(deployment, tmp_path):
    # 2b1cec1 lowered the qualified floor to 1024 (legacy cards, opt-in); below the floor is still refused
    floor = validation.PROFILE_FLOOR_BITS["qualified-signature"]
    text = deployment.server_config.read_text().replace(
        "[profiles.qualified-signature]\nmin_rsa_bits = 2048",
        f"[profiles.qualified-signature]\nmin_rsa_bits = {floor // 2}")
    p = deployment.server_config.with_name("bad.toml")
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    assert ei.value.key == "profiles.qualified-signature.min_rsa_bits" and f"at least {floor}" in str(ei.value)


def test_config_allows_1024_for_legacy_cns_auth(deployment):
    text = deployment.server_config.read_text().replace(
        "[profiles.cns-auth]\nmin_rsa_bits = 2048", "[profiles.cns-auth]\nmin_rsa_bits = 1024")
    p = deployment.server_config.with_name("legacy.toml")
    p.write_text(text)
    assert config.load(p).min_rsa_bits == {"cns-auth": 1024, "qualified-signature": 2048}
