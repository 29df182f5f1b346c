"""``cnsctl registration`` as a recognition officer types it, against the real daemon over mTLS (issue 19).

The IR registers a holder with a holder TOML and the signed form; the station (its certificate, as the
agent's uplink) reads the registration and issues with it through the daemon; ``show`` then says used,
by whom and for which request. Every mistake of the officer is one line naming the file and key, exits
1 and registers nothing; a role other than IR is refused by the daemon in one line.
"""
from __future__ import annotations

import json
import uuid

import pytest

from personalizer.rules import registrations
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc, registrations_pb2 as rpb, registrations_pb2_grpc as rpb_grpc
from tests.cli.conftest import one_line_error, run, with_endpoint
from tests.personalizer import helpers
from tests.registrations.support import PDF, STATION_URI

HOLDER = """[holder]
codice_fiscale = "{cf}"
given_name = "Mario"
surname = "Rossi"
birth_date = 1980-01-01
sex = "M"
birth_town = "H501"
issuer = "CCIAA di Roma"
"""


@pytest.fixture(scope="module")
def ir_config(daemon, deployment, tmp_path_factory):
    return with_endpoint(deployment.ir_config, daemon.port, deployment.ir_config.with_name("ir-live.toml"))


@pytest.fixture
def files(tmp_path):
    (tmp_path / "holder.toml").write_text(HOLDER.format(cf=helpers.CF))
    (tmp_path / "form.pdf").write_bytes(PDF)
    return tmp_path


def _cnsctl(config, *args):
    return run("cnsctl", "--config", str(config), *args)


def _open_count(config) -> int:
    r = _cnsctl(config, "--json", "registration", "list", "--all")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)["count"]


def test_register_then_a_station_issues_with_it_then_show_says_used(daemon, deployment, tls_dir, ir_config, files):
    r = _cnsctl(ir_config, "--json", "registration", "add", "--holder", str(files / "holder.toml"),
                "--form", str(files / "form.pdf"), "--expires-days", "10")
    assert r.returncode == 0, r.stderr
    added = json.loads(r.stdout)
    reg_id = added["registration_id"]
    assert added["state"] == "open" and added["codice_fiscale"] == helpers.CF and added["created_by"] == \
        "urn:cns:ir:RM:ir-001" and added["form"] == f"application/pdf {len(PDF)} bytes"
    station = helpers.ClientCert((deployment.station_config.parent / "client.pem").read_bytes(),
                                 (deployment.station_config.parent / "client.key.pem").read_bytes())
    with helpers.channel(daemon.port, tls_dir, station) as ch:
        seen = rpb_grpc.RegistrationsStub(ch).GetRegistration(rpb.GetRegistrationRequest(registration_id=reg_id),
                                                              timeout=10)
        req = helpers.issue_request(cf=seen.holder.codice_fiscale, operator="rao-1")
        req.registration_id = reg_id
        stub = pb_grpc.PersonalizerStub(ch)
        answer = stub.SubmitIssue(req, timeout=10)
        for _ in range(50):
            if answer.state == pb.REQUEST_STATE_ISSUED:
                break
            answer = stub.GetRequest(pb.GetRequestRequest(request_id=req.request_id), timeout=10)
    assert answer.state == pb.REQUEST_STATE_ISSUED
    r = _cnsctl(ir_config, "registration", "show", reg_id, "--json")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert (shown["state"], shown["request_id"], shown["used_by"], shown["used_operator"]) == (
        "used", req.request_id, STATION_URI, "rao-1")
    r = _cnsctl(ir_config, "registration", "show", reg_id)   # human-readable
    assert r.returncode == 0 and "used" in r.stdout and req.request_id in r.stdout, r.stderr


@pytest.mark.parametrize("name, prepare, words", [
    ("invalid codice fiscale", lambda d: (d / "holder.toml").write_text(HOLDER.format(cf="RSSMRA80A01H501X")),
     "holder.toml: holder.codice_fiscale: invalid codice fiscale"),
    ("unknown key", lambda d: (d / "holder.toml").write_text(HOLDER.format(cf=helpers.CF) + "nickname = \"x\"\n"),
     "holder.toml: holder.nickname: unknown key"),
    ("missing form", lambda d: (d / "form.pdf").unlink(), "form.pdf: file not found"),
    ("empty form", lambda d: (d / "form.pdf").write_bytes(b""), "form.pdf: the signed request form is required"),
    ("wrong type", lambda d: (d / "form.pdf").write_bytes(b"GIF89a" + b"\0" * 64), "form.pdf: not a PDF, PNG or JPEG"),
    ("oversized", lambda d: _sparse(d / "form.pdf", registrations.MAX_FORM_BYTES + 1), "at most 10 MiB"),
])
def test_an_officers_mistake_is_one_line_and_registers_nothing(ir_config, files, name, prepare, words):
    before = _open_count(ir_config)
    prepare(files)
    r = _cnsctl(ir_config, "registration", "add", "--holder", str(files / "holder.toml"),
                "--form", str(files / "form.pdf"))
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert words in one_line_error(r)
    assert _open_count(ir_config) == before


def _sparse(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def test_an_admin_cannot_register(daemon, deployment, files):
    admin = with_endpoint(deployment.admin_config, daemon.port, deployment.admin_config.with_name(
        f"admin-{uuid.uuid4().hex[:6]}.toml"))
    r = _cnsctl(admin, "registration", "add", "--holder", str(files / "holder.toml"), "--form", str(files / "form.pdf"))
    assert r.returncode == 1
    assert "PERMISSION_DENIED: role admin may not call /cns.v1.Registrations/RegisterHolder" in one_line_error(r)


def test_a_mistyped_registration_is_cancelled_then_registered_again(ir_config, tmp_path):
    cf = helpers.random_cf(42)
    holder = tmp_path / "h.toml"
    holder.write_text(HOLDER.format(cf=cf).replace('birth_town = "H501"\n', ""))
    form = tmp_path / "f.pdf"
    form.write_bytes(PDF)
    add = ["registration", "add", "--holder", str(holder), "--form", str(form)]
    first = json.loads(_cnsctl(ir_config, "--json", *add).stdout)
    holder.write_text(holder.read_text().replace('sex = "M"\n', ""))   # the officer fixes a field
    r = _cnsctl(ir_config, *add)
    assert r.returncode == 1 and f"already has an open registration {first['registration_id']}" in one_line_error(r)
    r = _cnsctl(ir_config, "--json", "registration", "cancel", first["registration_id"], "--reason", "sex mistyped")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["state"] == "cancelled"
    second = json.loads(_cnsctl(ir_config, "--json", *add).stdout)
    assert second["state"] == "open" and second["registration_id"] != first["registration_id"]
