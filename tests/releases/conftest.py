"""Fixtures of the release tests: a TUF repository built by personalizer.releases, served by a real nginx.

``served`` gives (repo, nginx, keys); ``make_release`` stages, signs and publishes a token release
from generated images; ``new_client`` builds the agent's UpdateClient trusting the repository's
first root (as shipped with the agent).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.updates.client import UpdateClient
from personalizer.releases.repository import ReleaseRepo
from tests.conftest import require
from tests.releases import nginx


@dataclass
class Served:
    repo: ReleaseRepo
    server: nginx.Nginx
    offline: Path
    online: Path
    tmp: Path

    @property
    def url(self) -> str:
        return self.server.url

    def first_root(self) -> bytes:
        return (self.repo.meta_dir / "1.root.json").read_bytes()


@pytest.fixture
def served(tmp_path):
    require(nginx.missing())
    repo = ReleaseRepo.init(tmp_path / "repo", tmp_path / "offline", tmp_path / "online")
    srv = nginx.start(repo.served, tmp_path / "nginx")
    yield Served(repo, srv, tmp_path / "offline", tmp_path / "online", tmp_path)
    srv.stop()


def write_release(folder: Path, model: str, version: str, parts: dict[str, tuple[str, bytes]],
                  constraints=(), min_agent="0.1") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f'model = "{model}"', f'version = "{version}"', f'min_agent_version = "{min_agent}"']
    for name, (ver, data) in parts.items():
        (folder / f"{name}-{ver}.img").write_bytes(data)
        lines += [f"[components.{name}]", f'version = "{ver}"', f'file = "{name}-{ver}.img"']
    for when, needs in constraints:
        lines += ["[[constraints]]", f'when = "{when}"', f'needs = "{needs}"']
    p = folder / f"{model}-{version}.toml"
    p.write_text("\n".join(lines) + "\n")
    return p


@pytest.fixture
def make_release(served):
    def make(version: str, parts: dict[str, tuple[str, bytes]], model="tok1", constraints=(), publish=True,
             expires=None):
        spec = write_release(served.tmp / "in" / version, model, version, parts, constraints)
        rel = served.repo.add_token_release(spec)
        if publish:
            served.repo.sign(served.offline)
            served.repo.publish(served.online, expires=expires)
        return rel
    return make


@pytest.fixture
def new_client(served, tmp_path):
    made = []

    def make(name="agent", *, root: bytes | None = None, **kw) -> UpdateClient:
        state = tmp_path / name
        kw.setdefault("retries", 3)
        kw.setdefault("timeout_s", 5.0)
        c = UpdateClient(state, served.url, bootstrap_root=root if root is not None else
                         (None if (state / "metadata" / "root.json").exists() else served.first_root()), **kw)
        made.append(c)
        return c
    return make


def image(size: int, seed: int = 0) -> bytes:
    """Deterministic incompressible-enough bytes of ``size``."""
    import hashlib
    out = bytearray()
    block = hashlib.sha256(f"{seed}".encode()).digest()
    while len(out) < size:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:size])


__all__ = ["Served", "write_release", "image", "os"]
