"""Acceptance, as people type it (issue 19 item 1): the IR runs ``cnsctl registration add``; later the
operator at a station of the chamber runs ``cns-agent personalize --registration ID`` on a blank card
through pcscd + vpcd (the agent rig of tests/ops/test_lifecycle_agent: ``cns-emulator serve``,
``cns-agent run``, the personalizer daemon over mTLS); ``cnsctl registration show`` then says used, for
that card, by that station. Asking again for another card is one line and changes nothing.
"""
from __future__ import annotations

import json

import pytest

from tests.cli.conftest import one_line_error, run, with_endpoint
from tests.ops.test_lifecycle_agent import PIN, rig  # noqa: F401  (rig: the module-scoped fixture)
from tests.registrations.support import PDF, STATION_URI

pytestmark = [pytest.mark.pcscd]

HOLDER = """[holder]
codice_fiscale = "RSSMRA80A01H501U"
given_name = "Mario"
surname = "Rossi"
birth_date = 1980-01-01
sex = "M"
birth_town = "ROMA"
"""


def test_ir_registers_then_the_operator_personalizes_with_the_registration(rig, ops_deployment, ops_daemon):  # noqa: F811
    ir = with_endpoint(ops_deployment.ir_config, ops_daemon.port, ops_deployment.ir_config.with_name("ir-pcscd.toml"))
    (rig.work / "reg-holder.toml").write_text(HOLDER)
    (rig.work / "form.pdf").write_bytes(PDF)
    r = run("cnsctl", "--config", str(ir), "--json", "registration", "add", "--holder", str(rig.work / "reg-holder.toml"),
            "--form", str(rig.work / "form.pdf"))
    assert r.returncode == 0, r.stderr
    reg_id = json.loads(r.stdout)["registration_id"]
    before = rig.card()
    assert before is not None and before["blank"] is True, before
    codes = rig.work / "codes-reg.toml"
    codes.write_text(f'pin = "{PIN}"\npuk = ""\n')
    codes.chmod(0o600)
    # the operator types neither --holder nor both
    assert rig.cli("personalize", "--reader", rig.reader, "--codes-file", str(codes)).returncode == 2
    both = rig.cli("personalize", "--reader", rig.reader, "--holder", str(rig.work / "reg-holder.toml"),
                   "--registration", reg_id, "--codes-file", str(codes))
    assert both.returncode == 2 and "not allowed with argument" in both.stderr
    r = rig.cli("personalize", "--reader", rig.reader, "--registration", reg_id, "--codes-file", str(codes), "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert any(x.get("step") == "registration" and reg_id in x.get("message", "") for x in lines), lines
    result = lines[-1]["result"]
    assert result["state"] == "done" and result["holder_label"] == "MARIO ROSSI", result
    card = rig.card()
    assert card["blank"] is False and card["holder_label"] == "MARIO ROSSI", card
    shown = json.loads(run("cnsctl", "--config", str(ir), "--json", "registration", "show", reg_id).stdout)
    assert (shown["state"], shown["used_by"], shown["card"]) == ("used", STATION_URI, card["serial"]), shown
    # the same registration again: refused in one line (this card is personalized now; nothing changes)
    again = rig.cli("personalize", "--reader", rig.reader, "--registration", reg_id, "--codes-file", str(codes))
    assert again.returncode != 0
    assert one_line_error(again)
    assert rig.card() == card


def test_local_api_refuses_holder_data_and_a_registration_together(rig):  # noqa: F811
    """What a CMS web app sends over the local API: one or the other, never both (nothing touched)."""
    import grpc

    from proto.cns.v1 import agent_pb2 as apb, agent_pb2_grpc as apb_grpc
    before = rig.card()
    request = apb.PersonalizeRequest(reader=rig.reader, pin=PIN, registration_id="REG-0123456789ABCDEF",
                                     holder=apb.HolderData(codice_fiscale="RSSMRA80A01H501U", given_name="Mario",
                                                           surname="Rossi", birth_date="1980-01-01"))
    with grpc.insecure_channel(f"unix:{rig.sock}") as ch:
        with pytest.raises(grpc.RpcError) as ei:
            list(apb_grpc.AgentLocalStub(ch).Personalize(request, timeout=30))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
    assert "either holder data or a registration id" in ei.value.details()
    assert rig.card() == before
