"""The agent's self-update (issue 18 item 5): swap its own binary atomically, for the user, with rollback.

Layout of the per-user install folder (no admin rights; nothing outside it is written)::

    INSTALL/versions/<version>/cns-agent   each build, as downloaded and verified (0755)
    INSTALL/current  -> versions/<version> the one the service runs (INSTALL/current/cns-agent)
    INSTALL/previous -> versions/<version> the one before, kept for the rollback
    INSTALL/update-state.json              written before a swap, removed after the verdict
    INSTALL/bad-versions.json              builds that failed their health check: never tried again

``apply`` downloads the build through the TUF client (verified per chunk and whole; a tampered build
is refused before it is ever written executable), writes the state file, swaps ``current`` with one
``rename`` (atomic on POSIX), then runs the health check on the new binary within a time limit. A
failure swaps back, records the build as bad and says so. ``recover`` (at every start) finishes a
swap whose verdict was never recorded (the updater was killed) by rolling back: the old binary
is known good, the new one is not.

The default health check runs ``cns-agent --version`` and expects the version it was published as;
the service passes a fuller one (it serves the local API, reaches the personalizer).
Imports ``agent.updates.client`` and ``cns_spec.releases``.
"""
from __future__ import annotations

import json
import os
import platform as _platform
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from agent.updates.client import UpdateClient, UpdateError
from cns_spec import releases as spec

BINARY = "cns-agent"
HEALTH_TIMEOUT_S = 20.0


def this_platform() -> str:
    return f"{_platform.system().lower()}-{_platform.machine().lower()}"


@dataclass(frozen=True)
class Outcome:
    action: str          # up-to-date | updated | rolled-back
    version: str         # the version running after the call
    detail: str = ""


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data))
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _point(link: Path, target: str) -> None:
    """Make ``link`` point at ``target`` in one rename (a reader sees the old or the new, never neither)."""
    tmp = link.with_name(f".{link.name}.new")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


def version_check(expected: str, timeout_s: float = HEALTH_TIMEOUT_S) -> Callable[[Path], str | None]:
    """The default health check: ``BINARY --version`` exits 0 within ``timeout_s`` and names ``expected``.
    Returns None when healthy, else what went wrong (one line)."""
    def check(binary: Path) -> str | None:
        try:
            r = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return f"it did not answer within {timeout_s:.0f} s"
        except OSError as exc:
            return f"it does not start ({exc.strerror or exc})"
        if r.returncode != 0:
            return f"it exited with status {r.returncode} at start"
        if f"{BINARY} {expected}" not in r.stdout:
            return f"it reports {r.stdout.strip()[:60]!r}, not {BINARY} {expected}"
        return None
    return check


class SelfUpdater:
    def __init__(self, install_dir: Path, client: UpdateClient | None = None, platform: str | None = None):
        self.dir = Path(install_dir)
        self.client = client
        self.platform = platform or this_platform()
        self.state = self.dir / "update-state.json"
        self.bad = self.dir / "bad-versions.json"

    # ---- what is installed ---------------------------------------------------------------------------------
    def current_version(self) -> str | None:
        link = self.dir / "current"
        return Path(os.readlink(link)).name if link.is_symlink() else None

    def bad_versions(self) -> set[str]:
        return set(json.loads(self.bad.read_text())) if self.bad.exists() else set()

    def install_first(self, binary: Path, version: str) -> None:
        """Put the first build in place (what the installer does once)."""
        spec.parse_version(version)
        dest = self.dir / "versions" / version
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(binary, dest / BINARY)
        os.chmod(dest / BINARY, 0o755)
        _point(self.dir / "current", f"versions/{version}")

    # ---- the update ----------------------------------------------------------------------------------------
    def available(self) -> tuple[str, str] | None:
        """The newest published build newer than the current one and not known bad: (version, target)."""
        if self.client is None:
            raise UpdateError("no release repository configured ([updates] url in the station config, or --url)")
        cur = self.current_version()
        bad = self.bad_versions()
        for version, target in reversed(self.client.agent_builds(self.platform)):
            if version in bad:
                continue
            if cur is None or spec.parse_version(version) > spec.parse_version(cur):
                return version, target
            break
        return None

    def download(self, version: str, target: str) -> Path:
        """Download and verify a build into versions/<version> (resumable); return the binary's path."""
        final = self.dir / "versions" / version
        if (final / BINARY).is_file():
            return final / BINARY
        staging = self.dir / "versions" / f".{version}.incoming"
        staging.mkdir(parents=True, exist_ok=True)
        current = self.dir / "current" / BINARY             # the running build: its unchanged chunks are reused
        self.client.download(target, staging / BINARY, seed=current if current.is_file() else None)
        # (refused above when tampered: never made executable)
        os.chmod(staging / BINARY, 0o755)
        os.replace(staging, final)
        return final / BINARY

    def apply(self, health_check: Callable[[Path], str | None] | None = None) -> Outcome:
        self.recover()
        found = self.available()
        cur = self.current_version()
        if found is None:
            return Outcome("up-to-date", cur or "none")
        version, target = found
        self.download(version, target)
        return self.switch(version, health_check or version_check(version))

    def switch(self, version: str, health_check: Callable[[Path], str | None]) -> Outcome:
        cur = self.current_version()
        _write_json(self.state, {"phase": "swapping", "from": cur, "to": version})
        _point(self.dir / "current", f"versions/{version}")
        problem = health_check(self.dir / "current" / BINARY)
        if problem is None:
            if cur:
                _point(self.dir / "previous", f"versions/{cur}")
            self.state.unlink()
            return Outcome("updated", version, f"from {cur}" if cur else "")
        self._roll_back(cur)
        self._mark_bad(version)
        return Outcome("rolled-back", cur or "none",
                       f"agent {version} failed its health check ({problem}); back on {cur}")

    def _roll_back(self, cur: str | None) -> None:
        if cur:
            _point(self.dir / "current", f"versions/{cur}")
        else:
            (self.dir / "current").unlink(missing_ok=True)
        self.state.unlink(missing_ok=True)

    def _mark_bad(self, version: str) -> None:
        _write_json(self.bad, sorted(self.bad_versions() | {version}))

    def recover(self) -> Outcome | None:
        """A swap left without a verdict (the updater died): go back to the build known good."""
        if not self.state.exists():
            return None
        st = json.loads(self.state.read_text())
        self._roll_back(st.get("from"))
        return Outcome("rolled-back", st.get("from") or "none",
                       f"an update to {st.get('to')} was interrupted before its health check; back on {st.get('from')}")
