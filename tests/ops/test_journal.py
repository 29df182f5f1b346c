"""The operation journal: steps survive a reopen, secrets are refused, one open op per card."""
import asyncio

import pytest

from agent.ops.errors import JournalError
from agent.ops.journal import DONE, Journal


def run(coro):
    return asyncio.run(coro)


def test_steps_survive_reopen(tmp_path):
    async def scenario():
        j = await Journal.open(tmp_path / "j.db")
        op = await j.begin_operation(kind="personalize", card_serial="S1", model_id="m", reader="r")
        await j.step_begun(op, "generate-auth-key")
        await j.step_done(op, "generate-auth-key", auth_pubkey_sha256="ab")
        await j.step_begun(op, "write-cert")
        await j.close()  # as a crash would leave it: no finish
        j2 = await Journal.open(tmp_path / "j.db")
        [again] = await j2.open_operations("S1")
        assert again.op_id == op.op_id
        assert again.step == "write-cert" and again.step_phase == "begun"
        assert again.step_done("generate-auth-key") and not again.step_done("write-cert")
        assert again.data["auth_pubkey_sha256"] == "ab"
        hist = await j2.history(op.op_id)
        assert [(s, p) for s, p, _ in hist] == [("generate-auth-key", "begun"), ("generate-auth-key", "done"),
                                                ("write-cert", "begun")]
        await j2.finish(again, DONE)
        assert await j2.open_operations("S1") == []
        await j2.close()
    run(scenario())


def test_advance_records_done_and_begun_together(tmp_path):
    """One commit: the finished steps' results and the next steps' begun records; secrets refused whole."""
    async def scenario():
        j = await Journal.open(tmp_path / "j.db")
        op = await j.begin_operation(kind="personalize", card_serial="S2", model_id="m", reader="r")
        await j.advance(op, {}, {"csr:CNS0": {}})
        await j.advance(op, {"csr:CNS0": {"csr_CNS0": "AAAA"}},
                        {"submit:CNS0": {"request_id": "r0"}, "submit:CNS1": {"request_id": "r1"}})
        with pytest.raises(JournalError, match="secrets"):
            await j.advance(op, {"submit:CNS0": {"cert_CNS0": "BB"}}, {"verify": {"pin": "12345678"}})
        await j.close()
        j2 = await Journal.open(tmp_path / "j.db")
        [again] = await j2.open_operations("S2")
        assert again.step == "submit:CNS1" and again.step_phase == "begun"
        assert again.step_done("csr:CNS0") and not again.step_done("submit:CNS0")
        assert again.data["csr_CNS0"] == "AAAA" and "cert_CNS0" not in again.data
        hist = await j2.history(op.op_id)
        assert [(s, ph) for s, ph, _ in hist] == [("csr:CNS0", "begun"), ("csr:CNS0", "done"),
                                                  ("submit:CNS0", "begun"), ("submit:CNS1", "begun")]
        assert hist[3][2] == {"request_id": "r1"}
        await j2.close()
    run(scenario())


@pytest.mark.parametrize("key", ["pin", "new_puk", "user_PIN", "private_key"])
def test_refuses_secrets(tmp_path, key):
    async def scenario():
        j = await Journal.open(tmp_path / "j.db")
        op = await j.begin_operation(kind="personalize", card_serial="S1", model_id="m", reader="r")
        with pytest.raises(JournalError, match="secrets never reach the journal"):
            await j.step_done(op, "set-pin", **{key: "12345678"})
        await j.close()
        assert b"12345678" not in (tmp_path / "j.db").read_bytes()
    run(scenario())


def test_one_open_operation_per_card(tmp_path):
    async def scenario():
        j = await Journal.open(tmp_path / "j.db")
        await j.begin_operation(kind="personalize", card_serial="S1", model_id="m", reader="r")
        with pytest.raises(JournalError, match="unfinished personalize"):
            await j.begin_operation(kind="renew", card_serial="S1", model_id="m", reader="r")
        await j.close()
    run(scenario())


def test_journal_file_is_private(tmp_path):
    async def scenario():
        j = await Journal.open(tmp_path / "sub" / "j.db")
        await j.close()
    run(scenario())
    assert (tmp_path / "sub" / "j.db").stat().st_mode & 0o077 == 0
