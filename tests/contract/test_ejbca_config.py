"""``[ca] connector = "ejbca"``: what the configuration accepts and what it refuses, with the key named."""
from __future__ import annotations

import pytest

from personalizer import config, deploy
from personalizer.errors import ConfigError

EJBCA = """[ca]
connector = "ejbca"

[ca.ejbca]
base_url = "https://ejbca.example.it:8443"
client_cert = "tls/server.pem"
client_key = "tls/server.key.pem"
trust_anchors = "tls/tls-ca.pem"
ca_name = "CNS-Issuing-CA"
chain = "ca/issuing.pem"

[ca.ejbca.certificate_profiles]
cns-auth = "CNS_AUTH"

[ca.ejbca.end_entity_profiles]
cns-auth = "CNS_HOLDER"

"""


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("ejbca-config") / "cns"
    dep = deploy.init_deployment(root, listen="127.0.0.1:0", ca_key_bits=2048)
    text = dep.server_config.read_text()
    return root, text[:text.index("[ca]\n")], text[text.index("[profiles.cns-auth]"):]


def _load(base, ca_block: str, extra: str = ""):
    root, head, tail = base
    p = root / "test.toml"
    p.write_text(head + ca_block + tail + extra)
    return config.load(p)


def test_ejbca_settings_load(base):
    cfg = _load(base, EJBCA)
    e = cfg.ca.ejbca
    assert cfg.ca.connector == "ejbca" and cfg.ca.root_cert is None
    assert e.base_url == "https://ejbca.example.it:8443" and e.ca_name == "CNS-Issuing-CA"
    assert e.certificate_profiles == {"cns-auth": "CNS_AUTH"} and e.end_entity_profiles == {"cns-auth": "CNS_HOLDER"}
    assert e.client_cert.is_absolute() and e.client_cert.exists() and e.timeout_seconds == 10.0


@pytest.mark.parametrize("block, key", [
    ('[ca]\nconnector = "ejbca"\n\n', "ca.ejbca"),
    (EJBCA.replace("https://ejbca", "http://ejbca"), "ca.ejbca.base_url"),
    (EJBCA.replace('client_key = "tls/server.key.pem"', 'client_key = "tls/missing.pem"'), "ca.ejbca.client_key"),
    (EJBCA.replace('cns-auth = "CNS_AUTH"', 'no-such = "X"'), "ca.ejbca.certificate_profiles"),
    (EJBCA.replace('cns-auth = "CNS_HOLDER"', 'qualified-signature = "CNS_HOLDER"'), "ca.ejbca.end_entity_profiles"),
    (EJBCA.replace('ca_name = "CNS-Issuing-CA"\n', ""), "ca.ejbca.ca_name"),
    (EJBCA.replace('connector = "ejbca"', 'connector = "dogtag"'), "ca.connector"),
])
def test_ejbca_settings_refused(base, block, key):
    with pytest.raises(ConfigError) as ei:
        _load(base, block)
    assert ei.value.key == key, ei.value


def test_pki_publication_needs_the_embedded_ca(base):
    with pytest.raises(ConfigError) as ei:
        _load(base, EJBCA, "\n[pki]\nenabled = true\n")
    assert ei.value.key == "pki.enabled"


def test_relay_concurrency_defaults_to_what_the_ca_can_take(base):
    """A remote CA gets at most 32 deliveries in flight per process; the embedded CA, which signs on this machine's
    threads, 128 (larger group commits; the drain figures behind it are by config.RELAY_CONCURRENCY). A value in
    the file wins."""
    root, head, tail = base
    assert "[broker]\n" in tail
    embedded = config.load(root / "personalizer.toml")
    assert embedded.ca.connector == "embedded" and embedded.broker.relay_concurrency == 128
    assert _load(base, EJBCA).broker.relay_concurrency == 32
    set_8 = (root, head, tail.replace("[broker]\n", "[broker]\nrelay_concurrency = 8\n", 1))
    assert _load(set_8, EJBCA).broker.relay_concurrency == 8
