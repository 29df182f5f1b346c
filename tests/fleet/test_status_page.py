"""Central IT's status page (issue 15 item 5): a running ``cns-personalizer serve`` shows CA health, queue
depth per lane, fleet counts and the rollouts in progress to headless Chromium holding the admin
certificate (read back from the DOM and from a screenshot); a station certificate or none is refused;
what stations typed (agent version, device model) is shown as text, never as markup."""
from __future__ import annotations

import html.parser
import os
import socket
import ssl
import struct
import subprocess
import time
import urllib.error
import urllib.request

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from personalizer import deploy
from personalizer.edge import tls_clients
from personalizer.edge.identity import identity_uri
from personalizer.fleet.store import Counts, Station
from personalizer.outbox.metrics import StatusFigures
from personalizer.status import page
from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc
from tests.conftest import require
from tests.fleet import support
from tests.personalizer import helpers
from tests.support import chromium

HOSTILE_VERSION = "<script>document.title='owned'</script>"
HOSTILE_MODEL = '"><img src=x onerror="document.title=1">'
SIZE = (1200, 900)


class Dom(html.parser.HTMLParser):
    """Tables by id (their data rows: cell texts; heading rows left out), the text of elements with an id,
    and the tags seen."""

    def __init__(self, text: str):
        super().__init__()
        self.tables: dict[str, list[list[str]]] = {}
        self.text: dict[str, str] = {}
        self.tags: list[str] = []
        self._table = self._id = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id")
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif "id" in a:
            self._id = a["id"]
            self.text[self._id] = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None and self._table:
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None
        elif tag == "tr" and self._table and not self.tables[self._table][-1]:
            self.tables[self._table].pop()   # a heading row
        elif tag == "table":
            self._table = None
        elif self._id and tag in ("h1", "p"):
            self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        elif self._id:
            self.text[self._id] += data

    def kv(self, table: str) -> dict[str, str]:
        return {r[0]: r[1] for r in self.tables[table] if len(r) == 2}


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def status_daemon(tmp_path_factory):
    """A daemon with the status page on, two stations in its inventory and one rollout running."""
    tmp = tmp_path_factory.mktemp("status")
    dep = deploy.init_deployment(tmp / "cns", listen="127.0.0.1:0", ca_key_bits=2048)
    conf = dep.server_config.read_text().replace("[status_page]\nenabled = false", "[status_page]\nenabled = true")
    assert "[status_page]\nenabled = true" in conf
    dep.server_config.write_text(conf)
    d = helpers.DaemonProcess(dep.server_config)
    try:
        line = d.proc.stdout.readline()
        assert "status page on port" in line, line
        page_port = int(line.rsplit(" ", 1)[1])
        hostile = support.station(dep, tmp / "st1", d.port, sid="RM-ST-1")
        plain = support.station(dep, tmp / "st2", d.port, sid="RM-ST-2")
        for st, version, model, release in ((hostile, HOSTILE_VERSION, HOSTILE_MODEL, ""),
                                           (plain, "1.4.0", "tok-a", "r1")):
            with helpers.channel(d.port, dep.root / "tls", support.cert_of(st)) as ch:
                hello = pb.FleetAgentMessage(hello=pb.FleetHello(agent_version=version, devices=[pb.FleetDevice(
                    serial=f"SN-{st.station.id}", kind="token", model=model, token_release=release)]))
                fleet_pb2_grpc.FleetStub(ch).Poll(pb.FleetPollRequest(messages=[hello]))
        with helpers.channel(d.port, dep.root / "tls", support.admin_cert(dep)) as ch:
            rollout = fleet_pb2_grpc.FleetAdminStub(ch).CreateRollout(pb.FleetRolloutSpec(
                name="r2 to tok-a", release="r2", model="tok-a", rate_per_minute=10, timeout_seconds=600))
        yield dep, page_port, rollout.rollout_id, (hostile, plain)
    finally:
        assert d.stop() == 0, d.proc.stderr.read()


@pytest.fixture
def browser_ok():
    require(chromium.missing())


def _browser(tmp_path, dep, port, client):
    return chromium.Browser(tmp_path / "browser", (dep.root / "tls" / "tls-ca.pem").read_bytes(), client,
                            origin=f"https://localhost:{port}")


def test_chromium_with_the_admin_certificate_sees_the_status(tmp_path, status_daemon, browser_ok):
    dep, port, rollout_id, _ = status_daemon
    browser = _browser(tmp_path, dep, port, support.admin_cert(dep))
    url = f"https://localhost:{port}/"
    dom = Dom(browser.dom(url))
    assert dom.text["banner"] == "CA operational"
    health = dom.kv("ca-health")
    assert health["state"] == "operational" and health["connector"] == "embedded"
    assert health["service window"] == "open" and health["circuit breaker"] == "closed"
    assert dom.kv("queue-depth") == {"priority": "0", "standard": "0"}
    totals = dom.kv("fleet-totals")
    assert totals["stations"] == "2" and totals["devices"] == "2" and totals["connected"] == "0"
    assert dom.tables["fleet-chambers"] == [["RM", "2", "0"]]
    assert sorted(dom.tables["fleet-models"]) == sorted([[HOSTILE_MODEL, "1"], ["tok-a", "1"]])
    assert [HOSTILE_VERSION, "1"] in dom.tables["fleet-versions"]
    assert {r[0] for r in dom.tables["fleet-recent"]} == {"RM-ST-1", "RM-ST-2"}
    [active] = dom.tables["rollouts-active"]
    assert active[:5] == ["r2 to tok-a", rollout_id, "running", "r2", "0/1"]
    # what a station typed is text: no element came of it
    assert "script" not in dom.tags and "img" not in dom.tags
    shot = browser.screenshot(url, tmp_path / "status.png", SIZE)
    assert _png_size(shot) == SIZE
    from PIL import Image
    with Image.open(shot) as im:
        rgb = im.convert("RGB")
        assert rgb.getpixel((10, 10)) == (0x1B, 0x7F, 0x3B)      # the green banner: CA operational
        assert rgb.getpixel((SIZE[0] - 10, SIZE[1] - 10)) == (255, 255, 255)
        assert len(rgb.crop((0, 60, 600, 400)).getcolors(maxcolors=1 << 20)) > 2   # text was drawn below the banner


@pytest.mark.parametrize("who", ["station", "none"])
def test_chromium_with_a_station_certificate_or_none_is_refused(tmp_path, status_daemon, browser_ok, who):
    dep, port, _, (hostile, _plain) = status_daemon
    browser = _browser(tmp_path, dep, port, support.cert_of(hostile) if who == "station" else None)
    dom = Dom(browser.dom(f"https://localhost:{port}/"))
    assert dom.text["banner"] == ("403 Forbidden" if who == "station" else "401 Unauthorized")
    assert ("role station" if who == "station" else "a client certificate is required") in dom.text["refusal"]
    assert "fleet-totals" not in dom.tables and "queue-depth" not in dom.tables


def _get(port: int, dep, client=None, *, method="GET", path="/"):
    ctx = ssl.create_default_context(cafile=str(dep.root / "tls" / "tls-ca.pem"))
    if client is not None:
        (dep.root / "c.pem").write_bytes(client.cert + client.key)
        ctx.load_cert_chain(dep.root / "c.pem")
    req = urllib.request.Request(f"https://localhost:{port}{path}", method=method,
                                 data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_only_an_unrevoked_admin_reads_it_and_nothing_else_is_served(status_daemon):
    dep, port, _, (hostile, _plain) = status_daemon
    tls = dep.root / "tls"
    status, headers, body = _get(port, dep, support.admin_cert(dep))
    assert status == 200 and "CA operational" in body
    assert "script-src" not in headers["Content-Security-Policy"] and "default-src 'none'" in headers[
        "Content-Security-Policy"]
    assert _get(port, dep)[0] == 401
    assert _get(port, dep, support.cert_of(hostile))[0] == 403
    tool = helpers.client_cert(tls, common_name="tool", identity=identity_uri("operator-tool", "T1", "RM"))
    assert _get(port, dep, tool)[0] == 403
    assert _get(port, dep, support.admin_cert(dep), method="POST")[0] == 405
    assert _get(port, dep, support.admin_cert(dep), path="/secret")[0] == 404
    # another CA's certificate does not get through the handshake
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError)):
        _get(port, dep, helpers.client_cert(tls, common_name="x", identity=identity_uri("admin", "x"), foreign=True))
    # an admin certificate central IT revoked is refused once the daemon rereads the client CRL
    second = helpers.client_cert(tls, common_name="second-admin", identity=identity_uri("admin", "second"))
    assert _get(port, dep, second)[0] == 200
    serial = x509.load_pem_x509_certificate(second.cert).serial_number
    ca_key = serialization.load_pem_private_key((tls / "tls-ca.key.pem").read_bytes(), None)
    tls_clients.revoke(tls / "client-crl.pem", x509.load_pem_x509_certificate((tls / "tls-ca.pem").read_bytes()),
                       ca_key, serial)
    deadline = time.monotonic() + 10
    while _get(port, dep, second)[0] != 401:
        assert time.monotonic() < deadline, "a revoked admin certificate still reads the status page"
        time.sleep(0.3)
    status, _, body = _get(port, dep, second)
    assert "revoked" in body


def _view(**kw) -> page.StatusView:
    ca = StatusFigures(operational=True, in_maintenance=False, reactivation_at=None, planned=(), per_kind=(), load=0,
                       queue_depth={"priority": 3, "standard": 12}, breaker_state="closed", window_open=True,
                       connector="embedded", detail="ok")
    st = Station("RM:RM-ST-1", "RM", "RM-ST-1", HOSTILE_VERSION, (), 0.0, time.time(), True, 1)
    fleet = Counts(1, 1, 1, 0, 30, (("RM", 1, 1),), ((HOSTILE_MODEL, 1),), ((HOSTILE_VERSION, 1),), (st,))
    return page.StatusView(**{"generated_at": time.time(), "ca": ca, "fleet": fleet, **kw})


def test_render_escapes_what_stations_typed_and_shows_a_ca_outage_in_red():
    dom = Dom(page.render(_view()))
    assert dom.tags.count("script") == 0 and "img" not in dom.tags
    assert dom.tables["fleet-recent"][0][2] == HOSTILE_VERSION
    assert dom.kv("queue-depth") == {"priority": "3", "standard": "12"}
    down = page.render(_view(ca=None, ca_error="CA unreachable"))
    assert '<header class="bad">' in down and "CA NOT operational" in down and "CA unreachable" in down


def test_a_busy_status_page_port_is_one_line_naming_the_key_and_the_holder(tmp_path):
    dep = deploy.init_deployment(tmp_path / "cns", listen="127.0.0.1:0", ca_key_bits=2048)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        conf = dep.server_config.read_text().replace(
            "[status_page]\nenabled = false\nhttp_host = \"127.0.0.1\"\nhttp_port = 0",
            f"[status_page]\nenabled = true\nhttp_host = \"127.0.0.1\"\nhttp_port = {busy}")
        assert f"http_port = {busy}" in conf
        dep.server_config.write_text(conf)
        r = subprocess.run([str(helpers.VENV_BIN / "cns-personalizer"), "--log-level", "WARNING", "serve", "--config",
                            str(dep.server_config)],
                           capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "status_page.http_port" in err and str(busy) in err and f"pid {os.getpid()}" in err, err
