"""``cns-agent renew --self``: the holder's command, on an emulated card (in process) against the real daemon's
enrollment port. Bad input gets one line and changes nothing; an unreachable personalizer leaves the card on its
old certificates and the same command run again finishes the renewal (the holder retrying)."""
from __future__ import annotations

import json

import pytest

from agent import cli as agent_cli
from agent.commands import CommandError
from agent.commands import self_renew
from firmware_profiles import load_models
from firmware_profiles.emulator import EmulatedCard
from tests.ops import renewal_env as env
from tests.self_renewal.test_self_renewal_agent import _journal, world  # noqa: F401  (module fixture)

MODEL = load_models()["infocamere-cns-2048"]


def _args(station, port, tmp_path, *extra):
    argv = ["renew", "--self", "--reader", "holder-pc", "--window-days", "3650",
            "--personalizer", f"127.0.0.1:{port}",
            "--trust", str(station.personalizer.trust_anchors), "--data-dir", str(tmp_path / "holder"), "--json"]
    if station.personalizer.server_name:
        argv += ["--server-name", station.personalizer.server_name]
    return agent_cli.build_parser().parse_args([*argv, *extra])


def test_holder_command_renews_then_retry_after_unreachable(world, tmp_path, capsys, monkeypatch):  # noqa: F811
    p, station, port = world
    p.ca.reset()
    card = EmulatedCard(MODEL)
    assert _journal(tmp_path, lambda j: env.personalize(station, j, card, MODEL)).state == "done"
    before = env.card_view(card, MODEL)
    pin = env.codes_for(MODEL).pin
    # nothing listens on this port: one line, the card keeps its certificates, the renewal is kept
    capsys.readouterr()
    rc = self_renew.self_renew(_args(station, env.free_port(), tmp_path), pin, connect=env.connect_to(card),
                               model=MODEL)
    last = json.loads(capsys.readouterr().out.splitlines()[-1])["result"]
    assert rc == 1 and last["state"] == "open" and "run the command again" in last["message"]
    assert env.card_view(card, MODEL)["CNS0"]["der"] == before["CNS0"]["der"]
    rc = self_renew.self_renew(_args(station, port, tmp_path), pin, connect=env.connect_to(card), model=MODEL)
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rc == 0, lines[-1]
    result = lines[-1]["result"]
    assert result["state"] == "done"
    after = env.card_view(card, MODEL, pin)
    assert all(after[ks.name]["serial"] != before[ks.name]["serial"] and after[ks.name]["key_matches"]
               for ks in MODEL.keysets)
    assert any(line.get("step") == "resume" for line in lines[:-1])     # the retry finished the kept renewal


@pytest.mark.parametrize("bad, message", [
    (["--trust", "/nonexistent/ca.pem"], "--trust /nonexistent/ca.pem: cannot read it"),
    (["--personalizer", "host:99999"], "expected HOST[:PORT]"),
])
def test_bad_input_is_one_line_and_touches_nothing(world, tmp_path, capsys, bad, message):  # noqa: F811
    p, station, port = world
    card = EmulatedCard(MODEL)
    args = _args(station, port, tmp_path, *bad)
    with pytest.raises(CommandError, match=message.replace("[", r"\[").replace("]", r"\]")):
        self_renew.self_renew(args, "12345678", connect=env.connect_to(card), model=MODEL)
    assert not (tmp_path / "holder").exists()        # no journal, the card never opened


def test_cli_without_trust_says_what_to_do(tmp_path, capsys):
    rc = agent_cli.main(["renew", "--self", "--reader", "r", "--personalizer", "localhost", "--codes-stdin",
                         "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "--trust CA.pem" in err[0]
