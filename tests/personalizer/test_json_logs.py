"""Structured JSON logs of the daemon (issue 15 item 5): ``cns-personalizer --log-format json`` writes one JSON
object per line (time, level, logger, message, the call's fields) for a whole run with issuance, a refused call
and a refused status-page visit, and no key, passphrase or PIN of the deployment ever appears in it."""
from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request

import grpc
import pytest

from personalizer import deploy
from proto.cns.v1 import admin_pb2, admin_pb2_grpc, personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.personalizer import helpers

TIMEOUT = 30


def _key_material(path) -> list[str]:
    """The base64 lines of a PEM key file, or the file's text (a passphrase, a PIN)."""
    text = path.read_text()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("-----") and ":" not in ln]
    return lines or [text.strip()]


def test_the_daemon_logs_one_json_object_per_line_and_no_secret(tmp_path):
    dep = deploy.init_deployment(tmp_path / "cns", listen="127.0.0.1:0", ca_key_bits=2048)
    conf = dep.server_config.read_text().replace("[status_page]\nenabled = false", "[status_page]\nenabled = true")
    dep.server_config.write_text(conf)
    # CNS_LOG_FORMAT, as a service unit would set it (the same as --log-format json)
    d = helpers.DaemonProcess(dep.server_config, env={"CNS_LOG_FORMAT": "json"}, log_level="DEBUG")
    try:
        page_port = int(d.proc.stdout.readline().rsplit(" ", 1)[1])
        station = dep.station_config.parent
        cc = helpers.ClientCert((station / "client.pem").read_bytes(), (station / "client.key.pem").read_bytes())
        with helpers.channel(d.port, dep.root / "tls", cc) as ch:
            issued = pb_grpc.PersonalizerStub(ch).SubmitIssue(helpers.issue_request(), timeout=TIMEOUT)
            assert issued.state == pb.REQUEST_STATE_ISSUED
            with pytest.raises(grpc.RpcError) as refused:   # a station is no admin
                admin_pb2_grpc.QueueAdminStub(ch).ListQueue(admin_pb2.ListQueueRequest(), timeout=TIMEOUT)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        ctx = ssl.create_default_context(cafile=str(dep.root / "tls" / "tls-ca.pem"))
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"https://localhost:{page_port}/", context=ctx, timeout=10)
        assert e.value.code == 401
    finally:
        assert d.stop() == 0
    err = d.proc.stderr.read()
    lines = [json.loads(line) for line in err.splitlines()]   # every line is one JSON object
    assert len(lines) > 5
    for line in lines:
        assert list(line)[:4] == ["time", "level", "logger", "message"], line
    [listening] = [ln for ln in lines if ln["message"].startswith("cns-personalizer listening on port")]
    assert listening["port"] == d.port and listening["client_auth_required"] is True
    assert any(ln.get("http_status") == 401 and ln["logger"] == "personalizer.status.server" for ln in lines)
    secrets = [s for path in (dep.root / "ca" / "passphrase", dep.root / "ca" / "issuing.key.pem",
                              dep.root / "ca" / "root.key.pem", dep.root / "tls" / "server.key.pem",
                              dep.root / "tls" / "tls-ca.key.pem", dep.admin_config.parent / "client.key.pem",
                              station / "client.key.pem", dep.root / "hsm" / "pin")
               for s in _key_material(path)]
    assert len(secrets) > 20
    out = err + d.proc.stdout.read()
    leaked = [s for s in secrets if s in out]
    assert not leaked, leaked
