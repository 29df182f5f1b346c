"""Acceptance: a holder with accents (NICOLÒ D'ANGELÒ, born in FORLÌ) personalizes end to end and OpenSC
shows the label (issue 9 item 7).

The rig of test_lifecycle_agent: a private pcscd with vpcd, ``cns-emulator serve``, ``cns-agent run`` and the
personalizer daemon over mTLS; the operator runs ``cns-agent personalize`` with a UTF-8 holder file. Then
``pkcs15-tool`` and ``pkcs11-tool`` (OpenSC's PKCS#11 module) read the card through the same pcscd. Before the
one codec, the agent wrote Latin-1, the personalizer refused "not ASCII" and the card was wiped.
"""
from __future__ import annotations

import json
import subprocess

import pytest

from tests.ops.test_lifecycle_agent import PIN, Rig, rig  # noqa: F401  (rig: the module-scoped fixture)

pytestmark = [pytest.mark.pcscd, pytest.mark.opensc]

HOLDER = """[holder]
codice_fiscale = "DNGNCL85C12D704Y"
given_name = "Nicolò"
surname = "D'Angelò"
birth_date = 1985-03-12
sex = "M"
birth_town = "FORLÌ"
issuer = "CCIAA di Forlì-Cesena"
"""
LABEL = "NICOLÒ D'ANGELÒ"
OPENSC_CONF = "app default {\n    framework pkcs15 {\n        use_file_caching = false;\n    }\n}\n"


def _tool(rig: Rig, *argv: str) -> str:
    conf = rig.work / "opensc.conf"
    conf.write_text(OPENSC_CONF)
    r = subprocess.run(argv, env={**rig.pcscd.env, "OPENSC_CONF": str(conf)}, capture_output=True, timeout=120)
    assert r.returncode == 0, (argv, r.stdout, r.stderr)
    return r.stdout.decode("utf-8")       # a Latin-1 label would not even decode


def test_accented_holder_personalizes_and_opensc_shows_the_label(rig, opensc_tools):  # noqa: F811
    holder = rig.work / "holder-nicolo.toml"
    holder.write_text(HOLDER, encoding="utf-8")
    codes = rig.work / "codes-nicolo.toml"
    codes.write_text(f'pin = "{PIN}"\npuk = ""\n')
    codes.chmod(0o600)
    r = rig.cli("personalize", "--reader", rig.reader, "--holder", str(holder), "--codes-file", str(codes), "--json")
    assert r.returncode == 0, (r.stdout, r.stderr)
    result = json.loads(r.stdout.splitlines()[-1])["result"]
    assert result["state"] == "done" and result["holder_label"] == LABEL, result
    card = rig.card()
    assert card is not None and card["blank"] is False and card["holder_label"] == LABEL, card
    assert LABEL in _tool(rig, "pkcs15-tool", "-D")
    tokens = _tool(rig, "pkcs11-tool", "--module", str(opensc_tools), "-L")
    assert f"{LABEL} (PIN CNS0)" in tokens and f"{LABEL} (PIN CNS1)" in tokens, tokens


def test_a_holder_whose_name_contradicts_the_codice_fiscale_is_refused_before_the_card(rig):  # noqa: F811
    before = rig.card()
    bad = rig.work / "holder-bad.toml"
    bad.write_text(HOLDER.replace('given_name = "Nicolò"', 'given_name = "Luca"'), encoding="utf-8")
    codes = rig.work / "codes-nicolo.toml"
    r = rig.cli("personalize", "--reader", rig.reader, "--holder", str(bad), "--codes-file", str(codes))
    assert r.returncode != 0
    err = r.stderr.strip()
    assert "holder.given_name" in err and "codice fiscale" in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert rig.card() == before


def test_local_api_refuses_bad_holder_data_before_the_card(rig):  # noqa: F811
    # what a CMS web app sends over the local API: the same check, INVALID_ARGUMENT naming the key
    import grpc

    from proto.cns.v1 import agent_pb2 as apb
    from proto.cns.v1 import agent_pb2_grpc as apb_grpc
    before = rig.card()
    request = apb.PersonalizeRequest(reader=rig.reader, pin=PIN, holder=apb.HolderData(
        codice_fiscale="DNGNCL85C12D704Y", given_name="NICOLÒ", surname="D'ANGELÒ\u202e", birth_date="1985-03-12",
        sex="M", birth_town="FORLÌ"))
    with grpc.insecure_channel(f"unix:{rig.sock}") as ch:
        with pytest.raises(grpc.RpcError) as ei:
            list(apb_grpc.AgentLocalStub(ch).Personalize(request, timeout=30))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
    assert "holder.surname" in ei.value.details() and "U+202E" in ei.value.details(), ei.value.details()
    assert rig.card() == before
