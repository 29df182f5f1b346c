"""The daemon's Prometheus endpoint shows the fleet (issue 15 item 5): a real Prometheus (Debian's) scrapes
a running ``cns-personalizer serve`` and the figures are read back through Prometheus's HTTP API."""
from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import pytest

from personalizer import deploy
from proto.cns.v1 import fleet_pb2 as pb, fleet_pb2_grpc
from tests.conftest import require
from tests.fleet import support
from tests.personalizer import helpers

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _query(port: int, expr: str):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.load(r)["data"]["result"]


def _wait_value(port: int, expr: str, want: float, timeout: float = 40) -> float:
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            got = _query(port, expr)
        except OSError:
            got = []
        if got:
            last = float(got[0]["value"][1])
            if last == want:
                return last
        time.sleep(0.5)
    raise AssertionError(f"Prometheus did not show {expr} = {want} (last {last})")


@pytest.fixture
def prometheus_ok():
    require([] if shutil.which("prometheus") else ["prometheus (apt-get install prometheus)"])


def test_prometheus_scrapes_the_fleet_figures(tmp_path, prometheus_ok):
    dep = deploy.init_deployment(tmp_path / "cns", listen="127.0.0.1:0", ca_key_bits=2048)
    conf = dep.server_config.read_text().replace("[metrics]\nenabled = false", "[metrics]\nenabled = true")
    assert "[metrics]\nenabled = true" in conf
    cfg_path = dep.root / "personalizer-metrics.toml"
    cfg_path.write_text(conf)
    d = helpers.DaemonProcess(cfg_path)
    prom = None
    try:
        line = d.proc.stdout.readline()
        assert "metrics on port" in line, line
        metrics_port = int(line.rsplit(" ", 1)[1])
        st = support.station(dep, tmp_path / "st", d.port)
        with helpers.channel(d.port, dep.root / "tls", support.cert_of(st)) as ch:
            hello = pb.FleetAgentMessage(hello=pb.FleetHello(agent_version="1", devices=[pb.FleetDevice(serial="S")]))
            fleet_pb2_grpc.FleetStub(ch).Poll(pb.FleetPollRequest(messages=[hello]))
        with helpers.channel(d.port, dep.root / "tls", support.cert_of(st)) as ch:   # a station is no admin
            with pytest.raises(grpc.RpcError) as e:
                fleet_pb2_grpc.FleetAdminStub(ch).ListStations(pb.FleetInventoryQuery())
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        prom_port = support.free_port()
        (tmp_path / "prometheus.yml").write_text(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: cns\n    static_configs:\n"
            f"      - targets: ['127.0.0.1:{metrics_port}']\n")
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        assert _wait_value(prom_port, "cns_fleet_stations_known", 1) == 1
        assert _wait_value(prom_port, 'cns_fleet_hellos_total{path="poll"}', 1) == 1
        assert _wait_value(prom_port, 'cns_fleet_refusals_total{code="PERMISSION_DENIED"}', 1) == 1
        assert _wait_value(prom_port, "cns_fleet_streams_connected", 0) == 0
        assert _query(prom_port, "up")[0]["value"][1] == "1"
    finally:
        if prom is not None:
            prom.terminate()
            prom.wait(10)
        assert d.stop() == 0, d.proc.stderr.read()
