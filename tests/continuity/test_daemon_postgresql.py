"""Two personalizer sites (``cns-personalizer serve``) on one Patroni cluster: ``[store] backend = "postgresql"``."""
from __future__ import annotations

import re

import pytest

from personalizer import config, deploy
from personalizer.errors import ConfigError
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.personalizer import helpers

TIMEOUT = 30


@pytest.fixture(scope="module")
def cluster(pg_session_cluster):
    """The session's cluster (these tests kill nothing), not a module's own."""
    return pg_session_cluster


def _site_config(dep, cluster, name: str, *, enrollment: bool) -> str:
    text = dep.server_config.read_text()
    pw = dep.root / f"pg-password-{name}"
    pw.write_text(cluster.secrets()["app"] + "\n")
    pw.chmod(0o600)
    ports = ",".join(str(cluster.ports.pg(s)) for s in ("site-a", "site-b"))
    store = (f'[store]\ndata_dir = "data-{name}"\nsynchronous = "FULL"\nbackend = "postgresql"\n'
             f'dsn = "host=127.0.0.1,127.0.0.1 port={ports} dbname=cns user=cns target_session_attrs=read-write"\n'
             f'password_file = "{pw.name}"\n')
    text = re.sub(r"\[store\]\n(?:[^\[\n].*\n)*", store + "\n", text)
    if not enrollment:   # one enrollment port per host: the DR site's stays off in this test
        text = text.replace("[enrollment]\nenabled = true", "[enrollment]\nenabled = false")
    path = dep.root / f"server-{name}.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture(scope="module")
def sites(cluster, tmp_path_factory):
    dep = deploy.init_deployment(tmp_path_factory.mktemp("pgdeploy") / "cns", chamber="RM",
                                 station_id="RM-STATION-01", listen="127.0.0.1:0")
    d = dep.station_config.parent
    cc = helpers.ClientCert((d / "client.pem").read_bytes(), (d / "client.key.pem").read_bytes())
    # daemons(): if B's start fails or times out, A is stopped too (it once ran on for 25 minutes)
    with helpers.daemons(_site_config(dep, cluster, "a", enrollment=True),
                         _site_config(dep, cluster, "b", enrollment=False)) as (a, b):
        channels = [helpers.channel(p.port, dep.root / "tls", cc) for p in (a, b)]
        yield [pb_grpc.PersonalizerStub(ch) for ch in channels]
        for ch in channels:
            ch.close()
    assert a.proc.returncode == 0 and b.proc.returncode == 0


def test_a_request_accepted_at_one_site_is_the_same_request_at_the_other(sites):
    site_a, site_b = sites
    req = helpers.issue_request()
    first = site_a.SubmitIssue(req, timeout=TIMEOUT)
    assert first.state == pb.REQUEST_STATE_ISSUED
    again = site_b.SubmitIssue(req, timeout=TIMEOUT)   # the agent failed over and retried the same id
    assert again.certificate.serial_hex == first.certificate.serial_hex
    assert again.certificate_der == first.certificate_der


def test_both_sites_issue_on_the_shared_database(sites, cluster):
    site_a, site_b = sites
    r1 = site_b.SubmitIssue(helpers.issue_request(cf=helpers.random_cf(7), csr=helpers.csr_der(cf=helpers.random_cf(7))),
                            timeout=TIMEOUT)
    assert r1.state == pb.REQUEST_STATE_ISSUED
    n = cluster.psql("SELECT count(*) FROM ca_certificates WHERE serial_hex = '%s'" % r1.certificate.serial_hex)
    assert n.strip() == "1"   # the CA index lives in the replicated database


@pytest.fixture(scope="module")
def plain_deployment(tmp_path_factory):
    return deploy.init_deployment(tmp_path_factory.mktemp("cfg") / "cns", chamber="RM", station_id="RM-STATION-01",
                                  listen="127.0.0.1:0")


def _load(dep, store: str):
    cfg = dep.server_config.with_name("store-test.toml")
    cfg.write_text(re.sub(r"\[store\]\n(?:[^\[\n].*\n)*", store + "\n", dep.server_config.read_text()))
    return config.load(cfg)


@pytest.mark.parametrize("dsn, expected", [
    ("host=a port=5432 dbname=cns user=cns target_session_attrs=read-write", "both sites"),
    ("host=a,b port=1,2 dbname=cns user=cns", "target_session_attrs=read-write"),
    ("host=a,b port=1,2 dbname=cns user=cns password=x target_session_attrs=read-write", "password_file"),
])
def test_a_postgresql_dsn_that_cannot_fail_over_is_refused(plain_deployment, dsn, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)) as e:
        _load(plain_deployment, f'[store]\ndata_dir = "data"\nbackend = "postgresql"\ndsn = "{dsn}"')
    assert "store.dsn" in str(e.value)


def test_sqlite_stays_the_default_and_refuses_postgresql_keys(plain_deployment):
    assert _load(plain_deployment, '[store]\ndata_dir = "data"').store.backend == "sqlite"
    with pytest.raises(ConfigError, match="store.dsn"):
        _load(plain_deployment, '[store]\ndata_dir = "data"\ndsn = "host=a,b"')


def test_reports_on_postgresql_say_once_that_no_archive_is_written(cluster, tmp_path):
    """[reports] (on by default) archives from the SQLite store's file: over PostgreSQL the daemon says so
    once at start instead of logging "no such table: requests" at every check."""
    dep = deploy.init_deployment(tmp_path / "cns", chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")
    path = _site_config(dep, cluster, "r", enrollment=False)
    assert config.load(path).reports.enabled
    d = helpers.DaemonProcess(path)
    assert d.stop() == 0
    err = d.proc.stderr.read()
    assert err.count("the daily archives are written from the SQLite store only") == 1, err
    assert "no such table" not in err and "Traceback" not in err, err
