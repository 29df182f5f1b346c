"""``scripts/cluster up --sites`` (issue 17 item 2): two personalizer sites on the Patroni database, one CA
key held in a SoftHSM2 token copied to each site; a station with both endpoints is served by the DR
site's copy of the key when the primary site dies; ``down`` stops the sites too."""
from __future__ import annotations

import asyncio
import os
import signal
import uuid

from cryptography import x509

import station_config
from agent.uplink.client import PersonalizerClient
from cns_spec.requests import CODE_ISSUED
from personalizer.continuity import sites
from personalizer.continuity.cluster import _alive
from tests.personalizer import helpers


def _issue(client, n: int):
    cf = helpers.random_cf(n)
    return client.submit_issue(
        request_id=str(uuid.uuid4()), profile="cns-auth", csr_der=helpers.csr_der(cf=cf),
        holder={"codice_fiscale": cf, "given_name": "Mario", "surname": "Rossi", "birth_date": "1980-01-01"},
        card_id=f"7440{n:012d}", model="test-card",
        requester={"station_id": "RM-STATION-01", "chamber_code": "RM", "operator_id": "op-001"},
        ef_dati_personali=helpers.ef_dati(cf))


def test_up_sites_share_one_token_key_and_down_stops_them(cluster):
    info = sites.up(cluster)
    root = cluster.run_dir / "deployment"
    procs = {n: dict(cluster.procs[f"personalizer-{n}"]) for n in ("a", "b")}
    assert all(_alive(p) for p in procs.values())
    # the key is in the token only: no key file, each site configured on its own copy of the token folder
    assert not (root / "ca" / "issuing.key.pem").exists()
    for n in ("a", "b"):
        text = (root / f"server-{n}.toml").read_text()
        assert 'key_store = "pkcs11"' in text and f'"hsm-{n}/ca-pin"' in text and 'backend = "postgresql"' in text
        assert (root / f"hsm-{n}" / "tokens").is_dir()
    assert sites.up(cluster)["sites"] == info["sites"]   # again: nothing restarted
    assert cluster.procs["personalizer-a"] == procs["a"]
    issuing = x509.load_pem_x509_certificate((root / "ca" / "issuing.pem").read_bytes())
    cfg = station_config.load(info["station_config"])

    async def go():
        async with PersonalizerClient(cfg) as client:
            at_a = await _issue(client, 201)
            os.kill(procs["a"]["pid"], signal.SIGKILL)   # the primary site's personalizer is lost
            at_b = await _issue(client, 202)
            return at_a, at_b, client.endpoint
    at_a, at_b, endpoint = asyncio.run(go())
    assert at_a.state == at_b.state == CODE_ISSUED and endpoint == info["sites"]["b"]["grpc"]
    for r in (at_a, at_b):   # both signed by the one issuing key, each site through its own token copy
        x509.load_der_x509_certificate(r.certificate_der).verify_directly_issued_by(issuing)
    cluster.down()
    assert not any(_alive(p) for p in procs.values())
    assert not any(n.startswith("personalizer-") for n in cluster.procs)
