"""The token release manifest and agent targets: the one format the publisher (cnsctl) writes and the agent reads.

A token release is one versioned system per token model: its components
(``firmware``, ``cdrom``, ``disk``), each with a version and the TUF target that
carries its bytes, the constraints between them ("CD-ROM 3.x needs firmware >=
2.1") and the minimum agent version able to install it. The manifest is itself
a TUF target (``releases/<model>/<version>.json``), so it is signed by the
targets role like every image it names.

Every component target's TUF ``custom`` field carries ``{"cns": {"kind": ...,
"chunk_size": N, "chunks": [sha256 hex, ...]}}``: the per-chunk hashes the
agent's fetcher checks as bytes arrive (signed inside the targets metadata).

Pure: no I/O; imports only the standard library and nothing of ours.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

__all__ = ["COMPONENTS", "CHUNK_SIZE", "Component", "Constraint", "Release", "ManifestError", "parse_version",
           "version_satisfies", "parse_manifest", "manifest_json", "release_target_path", "agent_target_path",
           "chunk_hashes", "cns_custom", "unmet_constraints", "install_order", "release_of"]

COMPONENTS = ("firmware", "cdrom", "disk")     # a token's parts, in the order they are committed when unconstrained
CHUNK_SIZE = 1 << 20                           # 1 MiB: a bad chunk costs at most this much download
MAX_CHUNKS = 1 << 16                           # 64 GiB at 1 MiB: bounds the custom field the agent reads
SCHEMA = 1
_VERSION_RE = re.compile(r"^[0-9]{1,6}(\.[0-9]{1,6}){0,3}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_REQ_RE = re.compile(r"^\s*([a-z]+)\s*(>=|<=|==|>|<)\s*([0-9.]+)\s*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
        ">": lambda a, b: a > b, "<": lambda a, b: a < b}


class ManifestError(ValueError):
    """A release manifest or requirement that is not what this format allows (names the key)."""


def parse_version(text: str) -> tuple[int, ...]:
    """``"2.1"`` → ``(2, 1, 0, 0)`` (padded so 2.1 == 2.1.0)."""
    if not isinstance(text, str) or not _VERSION_RE.match(text):
        raise ManifestError(f"{text!r} is not a version; expected numbers with dots, e.g. 2.1.0")
    parts = tuple(int(p) for p in text.split("."))
    return parts + (0,) * (4 - len(parts))


def version_satisfies(version: str, requirement: str) -> bool:
    """``version_satisfies("2.0", ">=2.1")`` → False."""
    m = re.match(r"^\s*(>=|<=|==|>|<)\s*([0-9.]+)\s*$", requirement)
    if not m:
        raise ManifestError(f"{requirement!r} is not a requirement; expected e.g. >=2.1")
    return _OPS[m.group(1)](parse_version(version), parse_version(m.group(2)))


@dataclass(frozen=True)
class Component:
    name: str             # firmware | cdrom | disk
    version: str
    target: str           # TUF target path of its bytes
    length: int
    sha256: str


@dataclass(frozen=True)
class Constraint:
    """``when`` holds for the release being installed ⇒ ``needs`` must hold (both "name op version")."""
    when: str
    needs: str

    def _split(self, text: str) -> tuple[str, str]:
        m = _REQ_RE.match(text)
        if not m or m.group(1) not in COMPONENTS:
            raise ManifestError(f"{text!r}: expected COMPONENT OP VERSION with COMPONENT one of "
                                f"{', '.join(COMPONENTS)}, e.g. firmware>=2.1")
        return m.group(1), m.group(2) + m.group(3)

    def applies(self, versions: dict[str, str]) -> bool:
        name, req = self._split(self.when)
        return name in versions and version_satisfies(versions[name], req)

    def met(self, versions: dict[str, str]) -> bool:
        name, req = self._split(self.needs)
        return name in versions and version_satisfies(versions[name], req)


@dataclass(frozen=True)
class Release:
    model: str
    version: str
    min_agent_version: str
    components: tuple[Component, ...]
    constraints: tuple[Constraint, ...]

    def component(self, name: str) -> Component | None:
        return next((c for c in self.components if c.name == name), None)

    def versions(self) -> dict[str, str]:
        return {c.name: c.version for c in self.components}


def release_target_path(model: str, version: str) -> str:
    return f"releases/{model}/{version}.json"


def agent_target_path(platform: str, version: str) -> str:
    return f"agent/{platform}/{version}/cns-agent"


def chunk_hashes(data_chunks) -> list[str]:
    """The sha256 of each chunk of an iterable of CHUNK_SIZE byte strings (the last may be shorter)."""
    return [hashlib.sha256(c).hexdigest() for c in data_chunks]


def cns_custom(kind: str, chunks: list[str], chunk_size: int = CHUNK_SIZE, **extra) -> dict:
    """The ``custom`` field of a target: what the fetcher needs to verify each chunk."""
    return {"cns": {"kind": kind, "chunk_size": chunk_size, "chunks": list(chunks), **extra}}


def _need(data: dict, key: str, typ, where: str):
    value = data.get(key)
    if not isinstance(value, typ) or isinstance(value, bool):
        raise ManifestError(f"{where}{key}: expected {typ.__name__}, got {value!r}")
    return value


def parse_manifest(raw: bytes | dict) -> Release:
    """Bytes (or a dict) of a release manifest → ``Release``; ``ManifestError`` names the bad key."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"the release manifest is not JSON: {exc}") from None
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA or raw.get("kind") != "token-release":
        raise ManifestError(f"not a token release manifest of schema {SCHEMA}")
    model = _need(raw, "model", str, "")
    if not _NAME_RE.match(model):
        raise ManifestError(f"model: {model!r} is not a model name")
    version = _need(raw, "version", str, "")
    parse_version(version)
    min_agent = _need(raw, "min_agent_version", str, "")
    parse_version(min_agent)
    comps = []
    for i, c in enumerate(_need(raw, "components", list, "")):
        where = f"components[{i}]."
        if not isinstance(c, dict):
            raise ManifestError(f"components[{i}]: expected a table")
        name = _need(c, "name", str, where)
        if name not in COMPONENTS:
            raise ManifestError(f"{where}name: {name!r} is not one of {', '.join(COMPONENTS)}")
        cv = _need(c, "version", str, where)
        parse_version(cv)
        sha = _need(c, "sha256", str, where)
        if not _SHA256_RE.match(sha):
            raise ManifestError(f"{where}sha256: expected 64 lower-case hex digits")
        length = _need(c, "length", int, where)
        if length < 0:
            raise ManifestError(f"{where}length: must not be negative")
        comps.append(Component(name, cv, _need(c, "target", str, where), length, sha))
    if not comps:
        raise ManifestError("components: a release names at least one component")
    if len({c.name for c in comps}) != len(comps):
        raise ManifestError("components: a component is named twice")
    cons = []
    for i, c in enumerate(raw.get("constraints", [])):
        if not isinstance(c, dict):
            raise ManifestError(f"constraints[{i}]: expected a table")
        k = Constraint(_need(c, "when", str, f"constraints[{i}]."), _need(c, "needs", str, f"constraints[{i}]."))
        k._split(k.when), k._split(k.needs)   # validates both
        cons.append(k)
    rel = Release(model, version, min_agent, tuple(comps), tuple(cons))
    # a release may leave a needed component to the token (a CD-ROM-only release); one that ships both must agree
    bad = [k for k in unmet_constraints(rel, {}) if k._split(k.needs)[0] in rel.versions()]
    if bad:
        raise ManifestError(f"constraints: the release itself does not meet {bad[0].when} ⇒ {bad[0].needs}")
    return rel


def manifest_json(rel: Release) -> bytes:
    """The canonical bytes of a manifest (sorted keys, no spaces): what is published as the release target."""
    return json.dumps({
        "schema": SCHEMA, "kind": "token-release", "model": rel.model, "version": rel.version,
        "min_agent_version": rel.min_agent_version,
        "components": [{"name": c.name, "version": c.version, "target": c.target, "length": c.length,
                        "sha256": c.sha256} for c in rel.components],
        "constraints": [{"when": k.when, "needs": k.needs} for k in rel.constraints],
    }, sort_keys=True, separators=(",", ":")).encode()


def unmet_constraints(rel: Release, installed: dict[str, str]) -> list[Constraint]:
    """The constraints the token would break after installing ``rel`` over ``installed`` (component → version)."""
    after = {**installed, **rel.versions()}
    return [k for k in rel.constraints if k.applies(after) and not k.met(after)]


def install_order(rel: Release) -> list[str]:
    """Components in commit order: a component a constraint ``needs`` goes before the one ``when`` names
    (firmware before the CD-ROM that needs it), else the COMPONENTS order. Every prefix of this order
    leaves the token meeting its constraints, as long as the old versions met them."""
    names = [c for c in COMPONENTS if rel.component(c)]
    before: dict[str, set[str]] = {n: set() for n in names}
    for k in rel.constraints:
        w, _ = k._split(k.when)
        n, _ = k._split(k.needs)
        if w in before and n in before and w != n:
            before[w].add(n)
    order: list[str] = []
    while len(order) < len(names):
        ready = [n for n in names if n not in order and before[n] <= set(order)]
        if not ready:
            raise ManifestError("constraints: they form a cycle; no install order keeps the token consistent")
        order.append(ready[0])
    return order


def release_of(installed: dict[str, str], releases) -> str:
    """The release a token runs as a whole: the newest of ``releases`` whose every component the token has
    (``installed``: component → version); "" when none does (a mix, or a set no known release names)."""
    hits = [r for r in releases if all(installed.get(c.name) == c.version for c in r.components)]
    return max(hits, key=lambda r: parse_version(r.version)).version if hits else ""
