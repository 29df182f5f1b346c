"""The one-file cns-agent, built once per test session by ``scripts/build-agent`` (~40 s on 2 cores;
the lock's wheels are cached by uv after the first run). ``CNS_AGENT_BINARY=path`` tests an
existing build instead (e.g. the one a release job made)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def build_agent(out: Path) -> Path:
    r = subprocess.run([str(ROOT / "scripts" / "build-agent"), "--out", str(out)], capture_output=True, text=True,
                       timeout=900, cwd=ROOT)
    assert r.returncode == 0, f"scripts/build-agent failed:\n{r.stderr[-4000:]}"
    binary = out / "cns-agent"
    assert binary.is_file() and os.access(binary, os.X_OK)
    return binary


@pytest.fixture(scope="session")
def agent_binary(tmp_path_factory) -> Path:
    given = os.environ.get("CNS_AGENT_BINARY")
    if given:
        return Path(given).resolve()
    return build_agent(tmp_path_factory.mktemp("onefile"))
