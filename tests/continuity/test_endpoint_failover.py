"""Both endpoints in the agent's and cnsctl's config (issue 17 item 2): the primary site goes away, the
call succeeds at the DR site; the primary comes back, calls go back to it; a request retried at the DR
site under its request id is the same request there, never a second certificate at the CA.

Two ``cns-personalizer serve`` sites on the session's Patroni cluster (``[store] backend =
"postgresql"``), each on a fixed port so that site A can be stopped and started again where stations
expect it. The agent side is its real uplink (``agent.uplink.client.PersonalizerClient``), cnsctl its
console script.
"""
from __future__ import annotations

import asyncio
import json
import re
import socket
import subprocess
import uuid

import pytest

from agent.uplink import client as uplink_client
from agent.uplink.client import PersonalizerClient
import station_config
from cns_spec.requests import CODE_ISSUED
from personalizer import deploy
from tests.cli.conftest import run
from tests.continuity.test_daemon_postgresql import _site_config
from tests.personalizer import helpers


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    """One site's daemon on a port of its own, stoppable and startable again on that port."""

    def __init__(self, config: str):
        self.config = config
        self.daemon: helpers.DaemonProcess | None = None
        self.port = int(re.search(r'listen = "127\.0\.0\.1:(\d+)"', open(config).read()).group(1))

    def start(self) -> None:
        self.daemon = helpers.DaemonProcess(self.config)
        assert self.daemon.port == self.port

    def kill(self) -> None:
        """SIGKILL: a site lost, not shut down."""
        self.daemon.proc.kill()
        self.daemon.proc.wait(10)
        self.daemon = None

    def stop(self) -> None:
        if self.daemon is not None:
            assert self.daemon.stop() == 0
            self.daemon = None


@pytest.fixture(scope="module")
def two_sites(pg_session_cluster, tmp_path_factory):
    dep = deploy.init_deployment(tmp_path_factory.mktemp("failover") / "cns", chamber="RM",
                                 station_id="RM-STATION-01", listen="127.0.0.1:0")
    sites = []
    for name in ("a", "b"):
        path = _site_config(dep, pg_session_cluster, name, enrollment=False)
        text = open(path).read()
        assert 'listen = "127.0.0.1:0"' in text
        open(path, "w").write(text.replace('listen = "127.0.0.1:0"', f'listen = "127.0.0.1:{_free_port()}"', 1))
        sites.append(Site(path))
    try:
        for s in sites:
            s.start()
    except BaseException:   # B's start failed or timed out (its own start stopped it): stop A as well
        for s in sites:
            if s.daemon is not None:
                s.daemon.stop()
        raise
    # the station's and central IT's configs name both sites: primary A, dr B
    for cfg in (dep.station_config, dep.admin_config):
        text = re.sub(r'primary = "[^"]+"', f'primary = "127.0.0.1:{sites[0].port}"\ndr = "127.0.0.1:{sites[1].port}"',
                      cfg.read_text())
        cfg.with_name("both-sites.toml").write_text(text.replace("timeout_seconds = 30", "timeout_seconds = 20"))
    yield dep, sites
    for s in sites:
        s.stop()


@pytest.fixture
def both_up(two_sites):
    """Every test starts with both sites up (a test may leave one killed)."""
    dep, sites = two_sites
    for s in sites:
        if s.daemon is None:
            s.start()
    return dep, sites


_CSRS: dict[int, bytes] = {}


def _issue(client: PersonalizerClient, n: int, request_id: str | None = None):
    """Holder and card number ``n``; the same request again (same CSR) with ``request_id``."""
    cf = helpers.random_cf(n)
    csr = _CSRS.setdefault(n, helpers.csr_der(cf=cf))
    return client.submit_issue(
        request_id=request_id or str(uuid.uuid4()), profile="cns-auth", csr_der=csr,
        holder={"codice_fiscale": cf, "given_name": "Mario", "surname": "Rossi", "birth_date": "1980-01-01"},
        card_id=f"7430{n:012d}", model="test-card",
        requester={"station_id": "RM-STATION-01", "chamber_code": "RM", "operator_id": "op-001"},
        ef_dati_personali=helpers.ef_dati(cf))


def _certificates_of(cluster, request_id: str) -> int:
    return int(cluster.psql(f"SELECT count(*) FROM ca_certificates WHERE request_id = '{request_id}'").strip())


def test_agent_fails_over_to_dr_and_comes_back(both_up, pg_session_cluster, monkeypatch):
    dep, (a, b) = both_up
    cfg = station_config.load(dep.station_config.with_name("both-sites.toml"))

    async def go():
        async with PersonalizerClient(cfg) as client:
            first = await _issue(client, 101)
            assert first.state == CODE_ISSUED and client.endpoint == cfg.personalizer.primary
            a.kill()                                          # the primary site is lost
            second = await _issue(client, 102)                # succeeds at the DR site
            assert second.state == CODE_ISSUED and client.endpoint == cfg.personalizer.dr
            # the operation that got no answer from A resumes with its request id: same request, same certificate
            again = await _issue(client, 101, request_id=first.request_id)
            assert again.certificate_der == first.certificate_der
            assert (await client.get_request(second.request_id)).state == CODE_ISSUED
            a.start()                                         # the primary site is back
            monkeypatch.setattr(uplink_client, "FAILBACK_AFTER_S", 0.0)
            third = await _issue(client, 103)
            assert third.state == CODE_ISSUED and client.endpoint == cfg.personalizer.primary
            monkeypatch.setattr(uplink_client, "FAILBACK_AFTER_S", 3600.0)
            a.kill()
            await _issue(client, 104)                         # to the DR site again
            b.kill()
            a.start()
            # at the DR site, which is now down: the call goes back to the primary within the same call
            fourth = await _issue(client, 105)
            assert fourth.state == CODE_ISSUED and client.endpoint == cfg.personalizer.primary
            return first
    first = asyncio.run(go())
    assert _certificates_of(pg_session_cluster, first.request_id) == 1   # retried at DR, issued once


def test_agent_with_both_sites_down_says_unavailable_and_names_the_dr_site(both_up):
    from agent.ops.errors import UplinkUnavailable
    dep, (a, b) = both_up
    cfg = station_config.load(dep.station_config.with_name("both-sites.toml"))
    a.kill()
    b.kill()

    async def go():
        async with PersonalizerClient(cfg) as client:
            with pytest.raises(UplinkUnavailable) as err:
                await _issue(client, 110)
            return str(err.value)
    msg = asyncio.run(go())
    assert "nothing answers" in msg and cfg.personalizer.dr in msg and "personalizer.dr" in msg


def test_cnsctl_uses_the_dr_site_when_the_primary_is_down_and_the_primary_when_it_is_back(both_up):
    dep, (a, b) = both_up
    cfg = str(dep.admin_config.with_name("both-sites.toml"))
    r = run("cnsctl", "--config", cfg, "ca-status", "--json")
    assert r.returncode == 0 and "DR site" not in r.stderr, r.stderr
    a.kill()
    r = run("cnsctl", "--config", cfg, "ca-status", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["connector"]
    assert r.stderr.strip() == (f"cnsctl: the primary personalizer at 127.0.0.1:{a.port} cannot be reached; "
                                f"using the DR site at 127.0.0.1:{b.port} (personalizer.dr)")
    a.start()
    r = run("cnsctl", "--config", cfg, "queue", "list", "--json")
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_cnsctl_with_both_sites_down_is_one_line_naming_the_primary(both_up):
    dep, (a, b) = both_up
    a.kill()
    b.kill()
    r = run("cnsctl", "--config", str(dep.admin_config.with_name("both-sites.toml")), "ca-status")
    assert r.returncode == 1
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "nothing answers" in err and f"127.0.0.1:{a.port}" in err and "personalizer.primary" in err


def test_agent_watch_opens_at_the_dr_site_when_the_primary_is_down(both_up):
    dep, (a, b) = both_up
    cfg = station_config.load(dep.station_config.with_name("both-sites.toml"))

    async def go():
        async with PersonalizerClient(cfg) as client:
            issued = await _issue(client, 120)
            a.kill()
            states = [r.state async for r in client.watch_request(issued.request_id)]
            return issued, states, client.endpoint
    issued, states, endpoint = asyncio.run(go())
    assert states and states[-1] == CODE_ISSUED and endpoint == cfg.personalizer.dr
