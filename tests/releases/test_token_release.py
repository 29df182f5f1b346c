"""Installing a token release on the emulated composite token (issue 14 item 1): the real USB path
(pyusb over the emulated bus, the agent's TokenLink, the token_update / token_firmware procedures on the
step engine, the journal in SQLite). Every test checks what a holder relies on: after the install the
token runs the old release everywhere or the new one everywhere, and every set it passed through met
the release's constraints."""
from __future__ import annotations

import asyncio

import pytest

from agent.devices.usb import UsbTokenBackend
from agent.ops.errors import PreconditionError
from agent.ops.journal import Journal
from agent.ops.token_release import installed_set, release_of, run_release
from firmware_profiles.usbemu.token import Stall
from firmware_profiles.usbtoken.protocol import REQ_COMMAND
from tests.releases.tokenrel import (RULE, changed, contents, payloads, provision, signed_release, small_model,
                                     token_set)

def stall_once(token, at_step):
    """The token stalls ONE management request: the first after the progress point ``at_step``."""
    orig, state = token._mgmt_control, {"armed": False, "fired": False}

    def control(req, data, length):
        if state["armed"] and not state["fired"] and req == REQ_COMMAND:
            state["fired"] = True
            raise Stall()
        return orig(req, data, length)

    def arm(step, done, total):
        if step == at_step:
            state["armed"] = True
    token._mgmt_control, token.arm = control, arm


V1 = {"firmware": "1.2.0", "cdrom": "2.5.0", "disk": "1.0.0"}
V2 = {"firmware": "2.1.0", "cdrom": "3.0.0", "disk": "1.1.0"}


@pytest.fixture(params=["cns-token-ccid", "cns-token-hid"])
def env(request, token_models, tmp_path):
    model = small_model(token_models[request.param])
    d1 = payloads(model, 1)
    d2 = changed(d1, 2)
    rel1, blobs1 = signed_release(model, "1.0.0", V1, d1, constraints=())
    rel2, blobs2 = signed_release(model, "2.0.0", V2, d2)
    bus, token = provision(model, tmp_path / "flash.bin", V1, d1)
    yield Env(tmp_path, model, bus, token, rel1, blobs1, d1, rel2, blobs2, d2)
    token.flash.close()


@pytest.fixture(scope="session")
def token_models():
    from firmware_profiles.usbtoken import load_token_models
    return load_token_models()


class Env:
    def __init__(self, tmp, model, bus, token, rel1, blobs1, d1, rel2, blobs2, d2):
        self.tmp, self.model, self.bus, self.token = tmp, model, bus, token
        self.rel1, self.blobs1, self.d1, self.rel2, self.blobs2, self.d2 = rel1, blobs1, d1, rel2, blobs2, d2
        self.seen: list[dict] = []        # the token's committed set at every progress point

    def connect(self):
        backend = UsbTokenBackend(self.bus, models={self.model.id: self.model})
        return lambda: backend.open(self.token.serial)

    def progress(self, hook=None):
        def cb(step, done, total):
            self.seen.append(token_set(self.token))
            if hook:
                hook(step, done, total)
        return cb

    def install(self, rel=None, blobs=None, previous=None, hook=None, agent="1.0"):
        async def go():
            j = await Journal.open(self.tmp / "journal.db")
            try:
                return await run_release(j, self.connect(), self.model, rel or self.rel2, blobs or self.blobs2,
                                         self.blobs1 if previous is None else previous, agent_version=agent,
                                         progress=self.progress(hook))
            finally:
                await j.close()
        return asyncio.run(go())

    def open_ops(self):
        async def go():
            j = await Journal.open(self.tmp / "journal.db")
            try:
                return await j.open_operations(self.token.serial)
            finally:
                await j.close()
        return asyncio.run(go())

    def on_release(self) -> str:
        info = UsbTokenBackend(self.bus, models={self.model.id: self.model}).open(self.token.serial).info()
        return release_of(installed_set(info), [self.rel1, self.rel2])

    def usable(self) -> bool:
        return all(not (k.applies(s) and not k.met(s)) for s in self.seen for k in self.rel2.constraints)


def test_a_good_release_ends_on_the_new_set_firmware_first(env):
    assert env.on_release() == "1.0.0"
    result, sent = env.install()
    assert result.state == "done", result.reason
    assert token_set(env.token) == V2 and env.on_release() == "2.0.0"
    got = contents(env.token)
    assert got["cdrom"] == env.d2["cdrom"] and got["disk"] == env.d2["disk"]
    assert env.usable() and {"firmware": "2.1.0", "cdrom": "2.5.0", "disk": "1.0.0"} in env.seen  # firmware first
    assert {"firmware": "1.2.0", "cdrom": "3.0.0", "disk": "1.0.0"} not in env.seen
    assert sent <= 2 * 4 * 4096 and not env.open_ops()           # only the changed blocks crossed the link


def test_a_failure_of_the_last_component_ends_on_the_old_release_everywhere(env):
    stall_once(env.token, "disk:stage")
    result, _ = env.install(hook=env.token.arm)
    assert result.state == "undone" and "stalled" in result.reason
    assert token_set(env.token) == V1 and env.on_release() == "1.0.0"
    got = contents(env.token)
    assert got["cdrom"] == env.d1["cdrom"] and got["disk"] == env.d1["disk"]
    assert {"firmware": "2.1.0", "cdrom": "3.0.0", "disk": "1.0.0"} in env.seen   # it had committed two
    assert env.usable() and not env.open_ops()
    assert env.install()[0].state == "done" and env.on_release() == "2.0.0"    # the holder retries: it works


def test_a_release_whose_constraint_the_token_does_not_meet_is_refused(env):
    rel, blobs = signed_release(env.model, "2.0.1", {"cdrom": "3.0.0"}, env.d2, constraints=(RULE,))
    before = env.token.flash.bytes_written
    with pytest.raises(PreconditionError, match=r"cdrom>=3 ⇒ firmware>=2.1 on this token") as ei:
        env.install(rel, blobs)
    assert "\n" not in str(ei.value)
    assert env.token.flash.bytes_written == before and token_set(env.token) == V1 and not env.open_ops()


@pytest.mark.parametrize("case,message", [
    ("model", "is for token model other"),
    ("agent", "needs agent 9.0 or newer"),
    ("hash", "not the one the release names"),
    ("no-old", "undoing it needs the firmware the token runs now"),
])
def test_bad_input_is_refused_before_a_byte_is_written(env, case, message):
    rel, blobs, previous, agent = env.rel2, dict(env.blobs2), None, "1.0"
    if case == "model":
        rel, blobs = signed_release(env.model, "2.0.0", V2, env.d2, release_model="other")
    elif case == "agent":
        rel, blobs = signed_release(env.model, "2.0.0", V2, env.d2, min_agent="9.0")
    elif case == "hash":
        blobs["disk"] = env.blobs1["disk"]
    else:
        previous = {"cdrom": env.blobs1["cdrom"]}       # partitions keep their old image; firmware does not
    before = env.token.flash.bytes_written
    with pytest.raises(PreconditionError, match=message):
        env.install(rel, blobs, previous=previous, agent=agent)
    assert env.token.flash.bytes_written == before and token_set(env.token) == V1


def test_unplugged_mid_cdrom_the_install_stays_open_and_the_same_release_finishes_it(env):
    def pull(step, done, total):
        if step == "cdrom:stage" and env.bus.tokens():
            env.bus.unplug(env.token)
    result, _ = env.install(hook=pull)
    assert result.state == "open" and len(env.open_ops()) == 1
    env.bus.plug(env.token)
    assert token_set(env.token)["firmware"] == "2.1.0" and env.usable()
    rel3, blobs3 = signed_release(env.model, "2.0.2", {**V2, "disk": "1.2.0"}, env.d2)
    with pytest.raises(PreconditionError, match="unfinished install of release 2.0.0"):
        env.install(rel3, blobs3)
    result, _ = env.install()
    assert result.state == "done" and token_set(env.token) == V2 and not env.open_ops()
    assert contents(env.token)["cdrom"] == env.d2["cdrom"]


def test_an_install_interrupted_by_a_kill_is_finished_by_recovery_from_the_journaled_files(env):
    """The agent dies mid-install (nothing after the kill point runs); on the next start token_recovery reads
    the manifest and images the journal names and finishes the same install."""
    _killed_at(env, env.blobs1, "disk:stage")
    assert len(env.open_ops()) == 1
    [(_, result)] = _recover(env)
    assert result.state == "done" and token_set(env.token) == V2 and not env.open_ops()
    assert contents(env.token)["disk"] == env.d2["disk"] and env.usable()


def test_a_failure_after_the_last_components_switch_ends_on_the_old_release_everywhere(env):
    """Both partitions switched (each into a slot of the reserved area, none free), then the token stalls: the
    undo must switch each back to the image it kept (found by the fault trials: the undo had no free slot)."""
    orig, state = env.token._mgmt_control, {"fired": False}

    def control(req, data, length):
        if not state["fired"] and req == REQ_COMMAND and env.token.meta["images"]["disk"]["version"] == "1.1.0":
            state["fired"] = True
            raise Stall()
        return orig(req, data, length)
    env.token._mgmt_control = control
    result, _ = env.install()
    assert state["fired"] and result.state == "undone" and "stalled" in result.reason
    assert token_set(env.token) == V1 and env.on_release() == "1.0.0" and not env.open_ops()
    got = contents(env.token)
    assert got["cdrom"] == env.d1["cdrom"] and got["disk"] == env.d1["disk"]
    assert V2 in env.seen or {"firmware": "2.1.0", "cdrom": "3.0.0", "disk": "1.0.0"} in env.seen
    assert env.usable()
    del env.token._mgmt_control
    assert env.install()[0].state == "done" and env.on_release() == "2.0.0"


def test_a_refusal_during_the_commit_leaves_the_install_open_and_it_is_finished_next_time(env):
    """Past the point of no return (every component verified on the token) only forward: a stall while
    confirming is not an undo; the operation stays open and the next run finishes it."""
    stall_once(env.token, "verify")

    def after_verify(step, done, total):
        if step == "verify" and done == total:          # the last read-back done: the next request is the commit's
            env.token.arm(step, done, total)
    result, _ = env.install(hook=after_verify)
    assert result.state == "open" and "stalled" in result.reason and "finished when" in result.reason
    assert token_set(env.token) == V2 and len(env.open_ops()) == 1
    del env.token._mgmt_control
    assert env.install()[0].state == "done" and not env.open_ops() and env.token.meta["previous"] == {}


def test_a_third_release_installs_after_the_second(env):
    """Release 3 after release 2 (issue 13 item 4): release 2 moved the CD-ROM and the disk into the reserved
    area's slots; release 3 must reuse the regions they left (the factory homes), not be refused as a full
    reserved area (the defect: a token could be updated once per partition, then never again)."""
    assert env.install()[0].state == "done" and env.on_release() == "2.0.0"
    d3 = changed(env.d2, 3)
    v3 = {"firmware": "2.2.0", "cdrom": "3.1.0", "disk": "1.2.0"}
    rel3, blobs3 = signed_release(env.model, "3.0.0", v3, d3)
    result, sent = env.install(rel3, blobs3, previous=env.blobs2)
    assert result.state == "done", result.reason
    assert token_set(env.token) == v3 and not env.open_ops() and env.token.meta["previous"] == {}
    got = contents(env.token)
    assert got["cdrom"] == d3["cdrom"] and got["disk"] == d3["disk"]
    assert sent <= 2 * 4 * 4096                     # still only the changed blocks cross the link
    assert release_of(installed_set(env.token.info()), [env.rel1, env.rel2, rel3]) == "3.0.0"


class HashCount:
    """SHA-256 and Ed25519 as the agent's token code sees them (its modules' ``hashlib``, the image check's
    Ed25519 key), counting the bytes each is fed: what an install costs is mostly these passes over the
    700 MiB image, so a pass that creeps back in fails the tests below."""

    MODULES = ("agent.ops.token_release", "agent.ops.token_update", "agent.ops.token_recovery",
               "agent.devices.usb", "firmware_profiles.usbtoken.image")

    def __init__(self, monkeypatch):
        import hashlib
        import importlib
        import types
        from cryptography.hazmat.primitives.asymmetric import ed25519

        self.sha256 = self.ed25519 = 0
        count = self

        class Sha256:
            def __init__(self, data=b""):
                self._h = hashlib.sha256()
                self.update(data)

            def update(self, data):
                count.sha256 += memoryview(data).nbytes
                self._h.update(data)

            def digest(self):
                return self._h.digest()

            def hexdigest(self):
                return self._h.hexdigest()
        real_key = ed25519.Ed25519PublicKey

        class Key:
            @staticmethod
            def from_public_bytes(raw):
                key = real_key.from_public_bytes(raw)

                class Counting:
                    def verify(self, signature, data):
                        count.ed25519 += memoryview(data).nbytes
                        return key.verify(signature, data)
                return Counting()
        for name in self.MODULES:
            monkeypatch.setattr(importlib.import_module(name), "hashlib", types.SimpleNamespace(sha256=Sha256))
        monkeypatch.setattr(ed25519, "Ed25519PublicKey", Key)

    def reset(self):
        self.sha256 = self.ed25519 = 0


def _passes(count: HashCount, env) -> tuple[float, float]:
    """(SHA-256 passes, Ed25519 passes) over the images an install reads: release 2's and the old firmware."""
    total = sum(len(b) for b in env.blobs2.values()) + len(env.blobs1["firmware"])
    return count.sha256 / total, count.ed25519 / total


def test_an_install_hashes_each_image_once_per_digest_it_needs(env, monkeypatch):
    """One SHA-256 of each file (the manifest's digest, carried into the journal's binding, not recomputed),
    one of each payload (against its signed header, inside the signature check), one of each changed
    partition's blocks (the stage step's diff), one Ed25519 check: 3 passes, not the 4 of before (the
    binding hashed every file again)."""
    count = HashCount(monkeypatch)
    result, _ = env.install()
    assert result.state == "done" and token_set(env.token) == V2
    sha, ed = _passes(count, env)
    assert 2.9 <= sha <= 3.05, f"{sha:.2f} SHA-256 passes over the images per install"
    assert 0.95 <= ed <= 1.05, f"{ed:.2f} Ed25519 passes over the images per install"


def _killed_at(env, old_blobs: dict, step: str, *, past_half: bool = False) -> dict:
    """The install of release 2.0.0 begun with ``old_blobs`` as the images to go back to, the journal naming its
    files, and the agent killed in ``step`` (``past_half``: once more than half of that step is done; nothing
    after the kill point runs). Returns the files the journal names."""
    from cns_spec import releases as spec
    files = {"manifest": env.tmp / "rel.json"}
    files["manifest"].write_bytes(spec.manifest_json(env.rel2))
    for kind, blobs in (("new", env.blobs2), ("old", old_blobs)):
        for n, b in blobs.items():
            files[f"{kind}:{n}"] = env.tmp / f"{kind}-{n}"
            files[f"{kind}:{n}"].write_bytes(b)

    class Killed(BaseException):
        pass

    def kill(at, done, total):
        if at == step and (not past_half or done > total // 2):
            raise Killed()

    async def go():
        j = await Journal.open(env.tmp / "journal.db")
        try:
            with pytest.raises(Killed):
                await run_release(j, env.connect(), env.model, env.rel2, env.blobs2, old_blobs, agent_version="1.0",
                                  progress=env.progress(kill), paths={k: str(v) for k, v in files.items()})
        finally:
            await j.close()
    asyncio.run(go())
    return files


def _killed_mid_cdrom(env) -> dict:
    """Killed past the middle of the CD-ROM's stage step; the firmware is the only old image kept."""
    return _killed_at(env, {"firmware": env.blobs1["firmware"]}, "cdrom:stage", past_half=True)


def _recover(env):
    from agent.ops.token_recovery import recover_token

    async def go():
        j = await Journal.open(env.tmp / "journal.db")
        try:
            return await recover_token(j, env.connect(), {env.model.id: env.model})
        finally:
            await j.close()
    return asyncio.run(go())


def test_a_recovery_hashes_each_file_once_and_checks_its_signature_again(env, monkeypatch):
    """After a kill mid-CD-ROM the recovery reads the journaled files: one SHA-256 of each (it must be the file
    the install began with), the signature checked again (the journal is no trust anchor), the blocks of the
    partitions still to stage; the payload digest is not recomputed (those bytes passed it when the install
    began, and the token hashes the staged slot against it before the switch). Before: 3 passes."""
    _killed_mid_cdrom(env)
    assert token_set(env.token)["firmware"] == "2.1.0" and len(env.open_ops()) == 1
    count = HashCount(monkeypatch)
    [(_, result)] = _recover(env)
    assert result.state == "done" and token_set(env.token) == V2 and not env.open_ops()
    got = contents(env.token)
    assert got["cdrom"] == env.d2["cdrom"] and got["disk"] == env.d2["disk"]
    sha, ed = _passes(count, env)
    partitions = (len(env.d2["cdrom"]) + len(env.d2["disk"])) / (
        sum(len(b) for b in env.blobs2.values()) + len(env.blobs1["firmware"]))
    assert sha <= 1 + partitions + 0.05, f"{sha:.2f} SHA-256 passes over the images per recovery"
    assert 0.95 <= ed <= 1.05, f"{ed:.2f} Ed25519 passes over the images per recovery"


@pytest.mark.parametrize("which", ["new:cdrom", "new:disk", "old:firmware"])
def test_a_file_changed_on_disk_between_kill_and_recovery_is_refused_and_the_token_left_alone(env, which):
    """One byte of a journaled file flipped after the kill: the recovery refuses it with a one-line reason
    naming the file, writes nothing to the token, and the operation stays open for the right files."""
    files = _killed_mid_cdrom(env)
    before, have = env.token.flash.bytes_written, token_set(env.token)
    blob = bytearray(files[which].read_bytes())
    blob[len(blob) // 2] ^= 0x01
    files[which].write_bytes(bytes(blob))
    [(_, result)] = _recover(env)
    assert result.state == "open" and "\n" not in result.reason
    assert which.split(":")[1] in result.reason and "changed" in result.reason, result.reason
    assert env.token.flash.bytes_written == before and token_set(env.token) == have and len(env.open_ops()) == 1
    blob[len(blob) // 2] ^= 0x01                 # the right file back: the same recovery finishes the install
    files[which].write_bytes(bytes(blob))
    [(_, result)] = _recover(env)
    assert result.state == "done" and token_set(env.token) == V2 and not env.open_ops()
