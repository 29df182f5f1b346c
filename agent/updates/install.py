"""Installing a token release: the interface a token offers, and the staged plan that cannot leave a mix.

``TokenInstaller`` is what a token (h-e's USB token backend) implements; ``install_release`` is the
procedure over it, in three phases:

1. **check** (nothing touched): the release is for this token's model, this agent is recent enough,
   the release's constraints hold on the final set and on every intermediate set the commit order
   passes through, each downloaded image has the manifest's length and sha256;
2. **stage + verify**: every component is written beside the active one (the token keeps running
   the old set) and read back by hash; any failure discards what was staged: the token is unchanged;
3. **commit** in ``cns_spec.releases.install_order`` (firmware before the CD-ROM that needs it), each
   commit one atomic switch on the token; a failed commit reverts the ones already made, newest first.

``plan``/``next_steps`` are pure functions of the release, the installed set and the journal of steps
done, so an agent restarted mid-install knows its way forward (all staged and verified: finish the
commits) or back (otherwise: discard and revert). The runner here takes a ``record`` callback for the
journal; wiring it to the agent's step engine and journal (agent.ops) is the composition root's work.
Imports ``cns_spec.releases`` only.
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cns_spec import releases as spec


class InstallRefused(Exception):
    """The release cannot go on this token (one line); nothing was changed."""


class InstallFailed(Exception):
    """A step failed; the token was put back on the release it had (one line says which)."""


class TokenInstaller(Protocol):
    model: str

    def installed(self) -> dict[str, str]:
        """Committed component → version."""

    def release(self) -> str | None:
        """The release version the token reports as a whole (None: none recorded)."""

    def stage(self, component: str, image: Path) -> None:
        """Write ``image`` beside the active one; the active one stays in use."""

    def staged_sha256(self, component: str) -> str:
        """Read the staged image back and hash it."""

    def commit(self, component: str) -> None:
        """Switch to the staged image in one atomic step (the old one is kept for ``revert``)."""

    def revert(self, component: str) -> None:
        """Make the image before the last commit active again (no-op when nothing was committed)."""

    def discard(self, component: str) -> None:
        """Drop a staged, uncommitted image (no-op when there is none)."""

    def record_release(self, version: str) -> None:
        """Record the release the token now runs as a whole."""


@dataclass(frozen=True)
class Step:
    action: str        # stage | verify | commit | record
    component: str     # or the release version for record


def plan(rel: spec.Release) -> list[Step]:
    order = spec.install_order(rel)
    return ([Step("stage", c) for c in order] + [Step("verify", c) for c in order]
            + [Step("commit", c) for c in order] + [Step("record", rel.version)])


def rollback_steps(done: list[Step]) -> list[Step]:
    """Undo of the steps begun (the last may have half happened): revert commits newest first, discard stages."""
    committed = [s.component for s in done if s.action == "commit"]
    staged = [s.component for s in done if s.action == "stage"]
    return [Step("revert", c) for c in reversed(committed)] + [Step("discard", c) for c in staged]


def next_steps(rel: spec.Release, begun: list[Step]) -> tuple[str, list[Step]]:
    """After a restart, from the journal of steps begun: ``("forward", steps left)`` when every component
    was staged and verified (what is left is atomic commits of verified images), else ``("back", undo)``."""
    steps = plan(rel)
    finished = begun[:-1]                  # the last step begun may not have completed: it is redone
    if {s.component for s in finished if s.action == "verify"} == set(spec.install_order(rel)):
        return "forward", [s for s in steps if s not in finished]
    return "back", rollback_steps(begun)


def check(token: TokenInstaller, rel: spec.Release, images: dict[str, Path], agent_version: str) -> None:
    if rel.model != token.model:
        raise InstallRefused(f"release {rel.version} is for model {rel.model}, this token is a {token.model}")
    if spec.parse_version(agent_version) < spec.parse_version(rel.min_agent_version):
        raise InstallRefused(f"release {rel.version} needs agent {rel.min_agent_version} or newer (this is "
                             f"{agent_version}); update the agent first (cns-agent update apply)")
    have = token.installed()
    bad = spec.unmet_constraints(rel, have)
    if bad:
        raise InstallRefused(f"release {rel.version} would break {bad[0].when} ⇒ {bad[0].needs} on this token")
    state = dict(have)
    for name in spec.install_order(rel):
        state[name] = rel.component(name).version
        broken = [k for k in rel.constraints if k.applies(state) and not k.met(state)]
        if broken:
            raise InstallRefused(f"release {rel.version}: after {name}, {broken[0].when} ⇒ {broken[0].needs} "
                                 "would not hold; no commit order keeps the token usable")
    for c in rel.components:
        p = images.get(c.name)
        if p is None:
            raise InstallRefused(f"release {rel.version}: no downloaded image for {c.name}")
        h = hashlib.sha256()
        with open(p, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
        if p.stat().st_size != c.length or h.hexdigest() != c.sha256:
            raise InstallRefused(f"{p}: not the {c.name} image release {rel.version} names (length or hash)")


def _run(token: TokenInstaller, rel: spec.Release, images: dict[str, Path], step: Step) -> None:
    if step.action == "stage":
        token.stage(step.component, images[step.component])
    elif step.action == "verify":
        if token.staged_sha256(step.component) != rel.component(step.component).sha256:
            raise InstallFailed(f"the staged {step.component} does not read back as written")
    elif step.action == "record":
        token.record_release(step.component)
    else:
        getattr(token, step.action)(step.component)      # commit | revert | discard


def install_release(token: TokenInstaller, rel: spec.Release, images: dict[str, Path], agent_version: str,
                    record: Callable[[Step], None] = lambda s: None, journal: list[Step] | None = None) -> str:
    """Move ``token`` to ``rel`` or leave it on the release it had; return the release the token reports.
    ``journal``: the steps an interrupted run had begun (after a restart): it is finished or undone."""
    check(token, rel, images, agent_version)
    begun: list[Step] = list(journal[:-1]) if journal else []
    todo = plan(rel)
    if journal:
        direction, todo = next_steps(rel, journal)
        if direction == "back":
            for u in todo:
                record(u)
                _run(token, rel, images, u)
            raise InstallFailed(f"release {rel.version} was interrupted before every component was verified; "
                                f"the token is back on release {token.release() or 'it had'}")
    try:
        for step in todo:
            record(step)                       # journaled before it runs
            begun.append(step)
            _run(token, rel, images, step)
    except Exception as exc:  # noqa: BLE001 - any failure of the token or the host undoes the install
        for u in rollback_steps(begun):
            record(u)
            _run(token, rel, images, u)
        msg = str(exc) if isinstance(exc, InstallFailed) else f"{type(exc).__name__}: {exc}"
        raise InstallFailed(f"release {rel.version} not installed ({msg}); the token is back on "
                            f"release {token.release() or 'it had'}") from None
    return token.release()
