"""Item 3 of the wiring task (issue 13 items 4-5): ``cns-agent token update --partition cdrom|disk IMAGE`` and
``cns-agent token firmware IMAGE`` (``[--serial S] [--json]``, the forms the issue names)
run the token plans in the running agent (journaled), with JSON progress lines; bad input is one line and
leaves the token as it was; an operation cut by a power loss is finished by the agent's ``token-recovery``
task when it starts."""
from __future__ import annotations

import asyncio
import json

import pytest

from agent import cli
from agent.app import AgentConfig
from agent.ops.journal import Journal
from agent.ops.token_update import run_update
from firmware_profiles.usbtoken import load_token_models
from tests.agent.test_app import TestBackend
from tests.tokens.helpers import cdrom_payload, connect, firmware, read_cdrom, running, setup_token, signed
from tests.wiring.conftest import RunningAgent, usb_on, wait_for

MODEL = load_token_models()["cns-token-ccid"]


@pytest.fixture
def rig(tmp_path):
    bus, token = setup_token(tmp_path, MODEL)
    cfg = AgentConfig(socket=tmp_path / "run" / "agent.sock", token_journal=tmp_path / "data" / "tokens.db")
    yield bus, token, cfg
    token.flash.close()


def _cli(capsys, *argv) -> tuple[int, list[dict], str]:
    rc = cli.main(list(argv))
    out = capsys.readouterr()
    return rc, [json.loads(line) for line in out.out.splitlines() if line.startswith("{")], out.err


def test_token_update_and_firmware_with_json_progress(rig, tmp_path, capsys):
    bus, token, cfg = rig
    new = cdrom_payload(change=3)
    image = tmp_path / "cdrom-2.0.0.img"
    image.write_bytes(signed(MODEL, new))
    fw = tmp_path / "fw-3.0.0.img"
    fw.write_bytes(firmware(MODEL))
    agent = RunningAgent(cfg, (TestBackend, usb_on(bus))).start()
    try:
        assert "token-recovery" in agent.agent.task_names
        sock = str(cfg.socket)
        rc, lines, err = _cli(capsys, "token", "update", "--partition", "cdrom", str(image), "--json",
                              "--socket", sock)
        assert rc == 0, err
        progress, result = lines[:-1], lines[-1]
        assert {p["step"] for p in progress} >= {"stage"} and all(p["event"] == "progress" for p in progress)
        assert progress[-1]["done"] <= progress[-1]["total"]
        assert result == {"event": "result", "serial": token.serial, "state": "done", "target": "cdrom",
                          "version": "2.0.0", "message": "", "sent_bytes": result["sent_bytes"]}
        assert 0 < result["sent_bytes"] < len(new)          # only changed blocks crossed the link
        assert read_cdrom(bus, token) == new

        rc, lines, err = _cli(capsys, "token", "firmware", str(fw), "--socket", sock)
        assert rc == 0, err
        assert running(bus) == ("runtime", "3.0.0")

        def listed():
            rc, [d], _ = _cli(capsys, "devices", "--json", "--socket", sock)
            t = d["tokens"]
            return t and t[0]["firmware"] == "3.0.0" and t[0]["partitions"]["cdrom"]["version"] == "2.0.0"
        wait_for(listed, "the new firmware and CD-ROM in cns-agent devices")
    finally:
        agent.stop()


def test_bad_images_are_one_line_and_change_nothing(rig, tmp_path, capsys):
    bus, token, cfg = rig
    before, disk_version = read_cdrom(bus, token), token.meta["images"]["disk"]["version"]
    fw = tmp_path / "fw.img"
    fw.write_bytes(firmware(MODEL))
    other = tmp_path / "other-model.img"
    other.write_bytes(signed(load_token_models()["cns-token-hid"], cdrom_payload(change=1)))
    garbage = tmp_path / "garbage.img"
    garbage.write_bytes(b"not an image" * 100)
    cdrom = tmp_path / "cdrom.img"
    cdrom.write_bytes(signed(MODEL, cdrom_payload(change=4)))
    truncated = tmp_path / "truncated.img"
    truncated.write_bytes(cdrom.read_bytes()[:-5000])
    from tests.tokens.test_bad_input import _other_key_image
    foreign_key = tmp_path / "foreign-key.img"
    foreign_key.write_bytes(_other_key_image(MODEL, cdrom_payload(change=4)))
    disk = tmp_path / "disk.img"
    disk.write_bytes(signed(MODEL, bytes(4096), kind="disk"))   # refused by kind before its size matters
    agent = RunningAgent(cfg, (TestBackend, usb_on(bus))).start()
    try:
        sock = str(cfg.socket)
        for argv, expect in [
            (("token", "update", "--partition", "cdrom", str(fw)), "firmware image: use `cns-agent token firmware`"),
            (("token", "firmware", str(other)), "use `cns-agent token update`"),
            (("token", "update", "--partition", "cdrom", str(other)), "cns-token-hid"),
            (("token", "update", "--partition", "cdrom", str(garbage)), "not a CNS token image"),
            (("token", "update", "--partition", "cdrom", str(tmp_path / "missing.img")), "no such file"),
            (("token", "update", "--partition", "cdrom", str(fw), "--serial", "NOPE"), "NOPE"),
            (("token", "update", "--partition", "cdrom", str(truncated)), "signature does not verify"),
            (("token", "update", "--partition", "cdrom", str(foreign_key)), "signed by someone else"),
            # the operator names the partition: an image of the other one is refused, not written there
            (("token", "update", "--partition", "disk", str(cdrom)), "is a CD-ROM image, not a disk image"),
            (("token", "update", "--partition", "cdrom", str(disk)), "is a disk image, not a CD-ROM image"),
        ]:
            rc, _, err = _cli(capsys, *argv, "--socket", sock)
            lines = err.strip().splitlines()
            assert rc == 1 and len(lines) == 1, (argv, err)
            assert expect in lines[0] and "Traceback" not in err and "StatusCode" not in err, (argv, err)
            assert "FAILED_PRECONDITION" not in lines[0], lines[0]
        assert read_cdrom(bus, token) == before and running(bus) == ("runtime", MODEL.firmware.version)
        assert token.meta["images"]["disk"]["version"] == disk_version
    finally:
        agent.stop()


@pytest.mark.parametrize("argv, expect", [
    (("token", "update", "IMAGE"), "--partition"),                       # the partition must be named
    (("token", "update", "--partition", "boot", "IMAGE"), "invalid choice: 'boot'"),
    (("token", "update", "--partition", "cdrom"), "IMAGE"),               # no image given
])
def test_the_update_command_line_names_what_is_missing(argv, expect, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(list(argv))
    assert exc.value.code == 2 and expect in capsys.readouterr().err


def test_an_update_cut_by_a_power_loss_is_finished_when_the_agent_starts(rig, tmp_path):
    bus, token, cfg = rig
    new = cdrom_payload(change=2)
    image = tmp_path / "cdrom-2.0.0.img"
    image.write_bytes(signed(MODEL, new))

    async def cut():
        cfg.token_journal.parent.mkdir(parents=True)
        j = await Journal.open(cfg.token_journal)
        try:
            return await run_update(j, connect(bus, token.serial), MODEL, "cdrom", image.read_bytes(),
                                    image_path=str(image))
        finally:
            await j.close()
    token.flash.cut_after(20_000)
    result, _ = asyncio.run(cut())
    assert result.state == "open"
    bus.replug(token)
    agent = RunningAgent(cfg, (TestBackend, usb_on(bus))).start()
    try:
        async def still_open():
            j = await Journal.open(cfg.token_journal)
            try:
                return bool(await j.open_operations(token.serial))
            finally:
                await j.close()
        wait_for(lambda: not asyncio.run(still_open()), "the agent to finish the cut update", timeout=30)
        assert read_cdrom(bus, token) == new
    finally:
        agent.stop()


def test_on_a_terminal_progress_is_a_bar_per_step(monkeypatch, capsys):
    from agent.commands.token import _Bar
    monkeypatch.setattr("sys.stderr.isatty", lambda: True, raising=False)
    bar = _Bar()
    for done in (0, 50, 100):
        bar.update("stage", done, 100)
    bar.update("verify", 7, 7)
    bar.close()
    err = capsys.readouterr().err
    assert "stage" in err and "verify" in err and "100%" in err
    monkeypatch.setattr("sys.stderr.isatty", lambda: False, raising=False)
    quiet = _Bar()
    quiet.update("stage", 1, 2)               # in a pipe without --json: no bar, no noise
    quiet.close()
    assert capsys.readouterr().err == ""


def test_ctrl_c_in_the_client_does_not_cut_the_update_the_agent_finishes_it(rig, tmp_path):
    """The operator presses Ctrl-C (the stream is cancelled) after the first progress line: the agent, which
    journaled the operation, carries it to its end; the token shows the new image, nothing is left open."""
    import grpc

    from proto.cns.v1 import agent_pb2 as pb
    from proto.cns.v1 import agent_pb2_grpc as pb_grpc
    bus, token, cfg = rig
    new = cdrom_payload(change=6)
    image = tmp_path / "cdrom-2.0.0.img"
    image.write_bytes(signed(MODEL, new))
    agent = RunningAgent(cfg, (TestBackend, usb_on(bus))).start()
    try:
        with grpc.insecure_channel(f"unix:{cfg.socket}") as ch:
            stream = pb_grpc.AgentLocalStub(ch).UpdateToken(
                pb.UpdateTokenRequest(target="cdrom", image_path=str(image)), timeout=30)
            first = next(stream)
            assert not first.HasField("result")
            stream.cancel()                                   # Ctrl-C

        async def open_ops():
            j = await Journal.open(cfg.token_journal)
            try:
                return await j.open_operations(token.serial)
            finally:
                await j.close()
        wait_for(lambda: read_cdrom(bus, token) == new, "the agent to finish the update", timeout=30)
        wait_for(lambda: not asyncio.run(open_ops()), "no open operation")
    finally:
        agent.stop()
