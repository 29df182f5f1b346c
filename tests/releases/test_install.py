"""The token installer plan (issue 14 item 1) against ``MockToken``, a mock of h-e's token (named a mock:
the real emulated USB token is wired by h-e / the lead). It records the token's active set after every
change, so each test can assert that every intermediate state was usable and the end is never a mix."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from agent.updates.install import InstallFailed, InstallRefused, Step, install_release, next_steps, plan
from cns_spec import releases as spec


class MockToken:
    """A mock token: active/staged/previous image per component, an injectable fault, a history of states."""

    def __init__(self, model: str, active: dict[str, tuple[str, bytes]], release: str, catalogue: dict[str, str]):
        self.model = model
        self.active = {c: hashlib.sha256(b).hexdigest() for c, (_, b) in active.items()}
        self.catalogue = catalogue | {hashlib.sha256(b).hexdigest(): v for _, (v, b) in active.items()}
        self.staged: dict[str, str] = {}
        self.previous: dict[str, str] = {}
        self._release = release
        self.fail_on: tuple[str, str] | None = None
        self.history = [self.installed()]
        self.calls: list[tuple[str, str]] = []

    def _maybe_fail(self, action, component):
        self.calls.append((action, component))
        if self.fail_on == (action, component):
            raise OSError(5, f"token I/O error during {action} of {component}")

    def installed(self):
        return {c: self.catalogue[h] for c, h in self.active.items()}

    def release(self):
        return self._release

    def stage(self, component, image: Path):
        self._maybe_fail("stage", component)
        self.previous.pop(component, None)
        self.staged[component] = hashlib.sha256(image.read_bytes()).hexdigest()

    def staged_sha256(self, component):
        self._maybe_fail("verify", component)
        return self.staged[component]

    def commit(self, component):
        self._maybe_fail("commit", component)
        self.previous[component] = self.active.get(component)
        self.active[component] = self.staged.pop(component)
        self.history.append(self.installed())

    def revert(self, component):
        if component in self.previous:
            old = self.previous.pop(component)
            if old is None:
                self.active.pop(component)
            else:
                self.active[component] = old
            self.history.append(self.installed())

    def discard(self, component):
        self.staged.pop(component, None)

    def record_release(self, version):
        self._maybe_fail("record", version)
        self._release = version


OLD = {"firmware": ("2.0", b"fw 2.0"), "cdrom": ("2.5", b"cd 2.5"), "disk": ("1.0", b"disk 1.0")}
NEW = {"firmware": ("2.1", b"fw 2.1"), "cdrom": ("3.0", b"cd 3.0")}
RULE = ("cdrom>=3", "firmware>=2.1")


def release(tmp_path, parts=NEW, model="tok1", version="2.0.0", constraints=(RULE,), min_agent="0.1"):
    images, comps = {}, []
    for name, (v, data) in parts.items():
        p = tmp_path / f"{name}-{v}"
        p.write_bytes(data)
        images[name] = p
        comps.append({"name": name, "version": v, "target": f"components/{model}/{name}-{v}", "length": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
    rel = spec.parse_manifest({"schema": 1, "kind": "token-release", "model": model, "version": version,
                               "min_agent_version": min_agent, "components": comps,
                               "constraints": [{"when": w, "needs": n} for w, n in constraints]})
    return rel, images


def token(parts=OLD):
    cat = {hashlib.sha256(b).hexdigest(): v for v, b in [*NEW.values(), *parts.values()]}
    return MockToken("tok1", parts, "1.0.0", cat)


def _usable(states, rel):
    return all(not [k for k in rel.constraints if k.applies(s) and not k.met(s)] for s in states)


def test_a_release_is_committed_firmware_first_and_reported_whole(tmp_path):
    rel2, images2 = release(tmp_path, {"cdrom": ("3.0", b"cd 3.0"), "firmware": ("2.1", b"fw 2.1")})
    t = token()
    journal = []
    assert install_release(t, rel2, images2, "0.1.0", journal.append) == "2.0.0"
    assert [c for a, c in t.calls if a == "commit"] == ["firmware", "cdrom"]      # the constraint orders them
    assert t.installed() == {"firmware": "2.1", "cdrom": "3.0", "disk": "1.0"}
    assert _usable(t.history, rel2)
    assert journal == plan(rel2)


@pytest.mark.parametrize("fault", [("stage", "firmware"), ("stage", "cdrom"), ("verify", "firmware"),
                                   ("verify", "cdrom"), ("commit", "firmware"), ("commit", "cdrom"),
                                   ("record", "2.0.0")])
def test_a_failure_at_any_step_leaves_the_token_on_its_old_release(tmp_path, fault):
    rel, images = release(tmp_path)
    t = token()
    t.fail_on = fault
    with pytest.raises(InstallFailed, match="not installed .*token I/O error.*back on release 1.0.0"):
        install_release(t, rel, images, "0.1.0")
    assert t.installed() == {"firmware": "2.0", "cdrom": "2.5", "disk": "1.0"} and t.release() == "1.0.0"
    assert t.staged == {}
    assert _usable(t.history, rel)


def test_a_staged_image_that_reads_back_wrong_is_never_committed(tmp_path):
    rel, images = release(tmp_path)
    t = token()
    real = t.staged_sha256
    t.staged_sha256 = lambda c: "0" * 64 if c == "cdrom" else real(c)
    with pytest.raises(InstallFailed, match="staged cdrom does not read back"):
        install_release(t, rel, images, "0.1.0")
    assert not [c for a, c in t.calls if a == "commit"] and t.installed()["cdrom"] == "2.5"


@pytest.mark.parametrize("kwargs, agent, expected", [
    ({"model": "tok2"}, "0.1.0", "is for model tok2, this token is a tok1"),
    ({"min_agent": "0.3"}, "0.2.9", "needs agent 0.3 or newer"),
    ({"parts": {"cdrom": ("3.0", b"cd 3.0")}}, "0.1.0", "would break cdrom>=3 ⇒ firmware>=2.1 on this token"),
])
def test_a_release_the_token_cannot_take_is_refused_untouched(tmp_path, kwargs, agent, expected):
    rel, images = release(tmp_path, **kwargs)
    t = token()
    with pytest.raises(InstallRefused, match=expected):
        install_release(t, rel, images, agent)
    assert t.calls == [] and t.history == [t.installed()]


def test_an_image_not_matching_the_manifest_is_refused(tmp_path):
    rel, images = release(tmp_path)
    images["firmware"].write_bytes(b"fw 2.1 but other")
    t = token()
    with pytest.raises(InstallRefused, match="not the firmware image release 2.0.0 names"):
        install_release(t, rel, images, "0.1.0")
    assert t.calls == []


def test_after_a_crash_it_goes_forward_once_all_is_verified_else_back(tmp_path):
    rel, images = release(tmp_path)
    steps = plan(rel)
    # crash during the first commit: everything was staged and verified, so finish it
    t = token()
    journal = []
    for s in steps[:5]:
        journal.append(s)
        if s.action == "stage":
            t.stage(s.component, images[s.component])
    assert journal[-1] == Step("commit", "firmware")
    assert next_steps(rel, journal)[0] == "forward"
    assert install_release(t, rel, images, "0.1.0", journal=journal) == "2.0.0"
    assert t.installed()["cdrom"] == "3.0" and _usable(t.history, rel)
    # crash while staging the CD-ROM: undo
    t2 = token()
    t2.stage("firmware", images["firmware"])
    with pytest.raises(InstallFailed, match="interrupted before every component was verified"):
        install_release(t2, rel, images, "0.1.0", journal=steps[:2])
    assert t2.staged == {} and t2.installed()["firmware"] == "2.0"
