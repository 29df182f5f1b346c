"""The release repository: TUF metadata built and signed with python-tuf's Metadata API.

Layout of a repository folder ``REPO``::

    REPO/repo.json               expiry policy (days per role)
    REPO/staged/root.json        a new root waiting for signatures (key rotation), if any
    REPO/staged/targets.json     new targets waiting for signatures (release add), if any
    REPO/served/                 what the HTTP file server serves, nothing else
        metadata/N.root.json, N.targets.json, N.snapshot.json, timestamp.json (consistent snapshots)
        targets/<dir>/<sha256>.<name>   target bytes, content-addressed (hash-prefixed)

The flow is ``add`` (stage; no key needed) → ``sign`` (offline root/targets keys, threshold
counted) → ``publish`` (online snapshot/timestamp keys). Published files are written in the
order targets → snapshot → timestamp, each atomically, so a client reading at any moment sees a
complete older or newer repository. ``publish`` with nothing staged only refreshes snapshot and
timestamp (the online role's periodic job).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import shutil
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (Key, Metadata, MetaFile, Role, Root, Snapshot, TargetFile, Targets, Timestamp)
from tuf.api.serialization.json import JSONSerializer

from cns_spec import releases as spec
from personalizer.releases import keys as keymod

DEFAULT_EXPIRY_DAYS = {"root": 365, "targets": 90, "snapshot": 7, "timestamp": 1}
_SERIALIZER = JSONSerializer(compact=False)


class ReleaseError(Exception):
    """What central IT did that cannot be done as asked: one line saying what and what to do."""


@dataclass(frozen=True)
class SignReport:
    role: str
    version: int
    signatures: int
    threshold: int


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _to_bytes(md: Metadata) -> bytes:
    return md.to_bytes(_SERIALIZER)


class ReleaseRepo:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.served = self.root / "served"
        self.meta_dir = self.served / "metadata"
        self.targets_dir = self.served / "targets"
        self.staged_dir = self.root / "staged"
        if not (self.root / "repo.json").is_file():
            raise ReleaseError(f"{self.root}: not a release repository; create one with 'cnsctl release init'")
        self.expiry_days = {**DEFAULT_EXPIRY_DAYS, **json.loads((self.root / "repo.json").read_text())["expiry_days"]}

    # ---- creation -------------------------------------------------------------------------------------------
    @classmethod
    def init(cls, root: Path, offline_keys: Path, online_keys: Path, *, root_keys: int = 1, root_threshold: int = 1,
             targets_keys: int = 1, targets_threshold: int = 1, expiry_days: dict | None = None) -> "ReleaseRepo":
        root = Path(root)
        if (root / "repo.json").exists():
            raise ReleaseError(f"{root}: already a release repository; use it, or choose an empty folder")
        if not (1 <= root_threshold <= root_keys) or not (1 <= targets_threshold <= targets_keys):
            raise ReleaseError("a threshold must be at least 1 and at most the number of keys of its role")
        days = {**DEFAULT_EXPIRY_DAYS, **(expiry_days or {})}
        now = _now()
        signers: dict[str, list] = {}
        for role, n, folder in (("root", root_keys, offline_keys), ("targets", targets_keys, offline_keys),
                                ("snapshot", 1, online_keys), ("timestamp", 1, online_keys)):
            signers[role] = [keymod.generate(Path(folder), role)[1] for _ in range(n)]
        r = Root(expires=now + _dt.timedelta(days=days["root"]), consistent_snapshot=True)
        for role, ss in signers.items():
            for s in ss:
                r.add_key(s.public_key, role)
        r.roles["root"].threshold = root_threshold
        r.roles["targets"].threshold = targets_threshold
        root_md = Metadata(r)
        for s in signers["root"]:
            root_md.sign(s, append=True)
        targets_md = Metadata(Targets(expires=now + _dt.timedelta(days=days["targets"])))
        for s in signers["targets"]:
            targets_md.sign(s, append=True)
        (root / "served" / "metadata").mkdir(parents=True, exist_ok=True)
        (root / "served" / "targets").mkdir(parents=True, exist_ok=True)
        _atomic_write(root / "repo.json", json.dumps({"expiry_days": days}, indent=2).encode())
        repo = cls(root)
        repo._write_published("root", root_md)
        repo._write_published("targets", targets_md)
        repo._publish_snapshot_timestamp(keymod.load_folder(Path(online_keys), keymod.ONLINE_ROLES))
        return repo

    # ---- reading --------------------------------------------------------------------------------------------
    def _latest(self, role: str) -> Metadata:
        if role == "timestamp":
            return Metadata.from_file(str(self.meta_dir / "timestamp.json"))
        versions = sorted(int(p.name.split(".", 1)[0]) for p in self.meta_dir.glob(f"*.{role}.json"))
        if not versions:
            raise ReleaseError(f"{self.root}: no published {role} metadata; the repository is damaged")
        return Metadata.from_file(str(self.meta_dir / f"{versions[-1]}.{role}.json"))

    def _staged(self, role: str) -> Metadata | None:
        p = self.staged_dir / f"{role}.json"
        return Metadata.from_file(str(p)) if p.is_file() else None

    def root_md(self) -> Metadata:
        """The root in force for what is being staged: the staged one when a rotation is pending."""
        return self._staged("root") or self._latest("root")

    def _write_published(self, role: str, md: Metadata) -> None:
        data = _to_bytes(md)
        if role == "timestamp":
            _atomic_write(self.meta_dir / "timestamp.json", data)
            return
        _atomic_write(self.meta_dir / f"{md.signed.version}.{role}.json", data)
        if role == "root":
            _atomic_write(self.meta_dir / "root.json", data)   # the newest root, for bootstrapping a client

    def _stage(self, role: str, md: Metadata) -> None:
        _atomic_write(self.staged_dir / f"{role}.json", _to_bytes(md))

    def _targets_for_edit(self) -> Metadata:
        md = self._staged("targets")
        if md is None:
            md = self._latest("targets")
            md.signed.version += 1
        md.signatures.clear()                  # the payload changes: every earlier signature is void
        md.signed.expires = _now() + _dt.timedelta(days=self.expiry_days["targets"])
        return md

    # ---- adding targets -------------------------------------------------------------------------------------
    def _store_blob(self, target_path: str, src: Path, kind: str, **extra) -> TargetFile:
        """Copy ``src`` into served/targets under its hash-prefixed name, computing hashes and chunk hashes."""
        whole, chunks, length = hashlib.sha256(), [], 0
        self.targets_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.targets_dir, prefix=".incoming.")
        try:
            with open(src, "rb") as f, os.fdopen(fd, "wb") as out:
                while block := f.read(spec.CHUNK_SIZE):
                    whole.update(block)
                    chunks.append(hashlib.sha256(block).hexdigest())
                    length += len(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            if len(chunks) > spec.MAX_CHUNKS:
                raise ReleaseError(f"{src}: larger than {spec.MAX_CHUNKS} MiB, the most one target may be")
            digest = whole.hexdigest()
            dirname, _, base = target_path.rpartition("/")
            dest = self.targets_dir / dirname / f"{digest}.{base}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except FileNotFoundError:
            raise ReleaseError(f"{src}: no such file") from None
        finally:
            Path(tmp).unlink(missing_ok=True)
        return TargetFile(length, {"sha256": digest}, target_path,
                          {"custom": spec.cns_custom(kind, chunks, **extra)})

    def _add_target(self, md: Metadata, tf: TargetFile) -> None:
        old = md.signed.targets.get(tf.path)
        if old is not None and old.hashes != tf.hashes:
            raise ReleaseError(f"{tf.path} is already in the repository with other content; give it a new version")
        md.signed.targets[tf.path] = tf

    def add_token_release(self, spec_file: Path) -> spec.Release:
        """Stage the release described by a TOML file (model, version, min_agent_version, [components.NAME]
        version + file relative to the TOML, [[constraints]] when + needs)."""
        spec_file = Path(spec_file)
        try:
            data = tomllib.loads(spec_file.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ReleaseError(f"{spec_file}: no such file") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ReleaseError(f"{spec_file}: not a readable TOML file: {exc}") from None
        try:
            for key in ("model", "version", "min_agent_version"):
                if not isinstance(data.get(key), str):
                    raise spec.ManifestError(f"{key}: expected a string")
            comps = data.get("components")
            if not isinstance(comps, dict) or not comps:
                raise spec.ManifestError("components: expected at least one [components.NAME] table "
                                         f"(NAME one of {', '.join(spec.COMPONENTS)})")
            md = self._targets_for_edit()
            entries = []
            for name, c in comps.items():
                if name not in spec.COMPONENTS:
                    raise spec.ManifestError(f"components.{name}: not one of {', '.join(spec.COMPONENTS)}")
                if not isinstance(c, dict) or not isinstance(c.get("version"), str) or not isinstance(c.get("file"), str):
                    raise spec.ManifestError(f"components.{name}: expected version and file (strings)")
                spec.parse_version(c["version"])
                tpath = f"components/{data['model']}/{name}-{c['version']}"
                tf = self._store_blob(tpath, spec_file.parent / c["file"], name, model=data["model"],
                                      component_version=c["version"])
                self._add_target(md, tf)
                entries.append({"name": name, "version": c["version"], "target": tpath, "length": tf.length,
                                "sha256": tf.hashes["sha256"]})
            raw = {"schema": spec.SCHEMA, "kind": "token-release", "model": data["model"], "version": data["version"],
                   "min_agent_version": data["min_agent_version"], "components": entries,
                   "constraints": data.get("constraints", [])}
            rel = spec.parse_manifest(raw)
        except spec.ManifestError as exc:
            raise ReleaseError(f"{spec_file}: {exc}") from None
        mpath = spec.release_target_path(rel.model, rel.version)
        if mpath in md.signed.targets:
            raise ReleaseError(f"release {rel.version} of {rel.model} is already published; give it a new version")
        with tempfile.NamedTemporaryFile(dir=self.root, prefix=".manifest.") as tmp:
            tmp.write(spec.manifest_json(rel))
            tmp.flush()
            self._add_target(md, self._store_blob(mpath, Path(tmp.name), "release", model=rel.model,
                                                  version=rel.version))
        self._stage("targets", md)
        return rel

    def add_agent(self, binary: Path, version: str, platform: str) -> str:
        """Stage an agent build as a target (issue 18: the agent updates itself from this repository)."""
        try:
            spec.parse_version(version)
        except spec.ManifestError as exc:
            raise ReleaseError(f"--agent-version: {exc}") from None
        if not platform.replace("-", "").replace("_", "").isalnum():
            raise ReleaseError(f"--platform {platform!r}: expected e.g. linux-x86_64")
        md = self._targets_for_edit()
        tpath = spec.agent_target_path(platform, version)
        if tpath in md.signed.targets:
            raise ReleaseError(f"agent {version} for {platform} is already published; give it a new version")
        self._add_target(md, self._store_blob(tpath, Path(binary), "agent", version=version, platform=platform))
        self._stage("targets", md)
        return tpath

    # ---- key rotation ---------------------------------------------------------------------------------------
    def rotate(self, role: str, offline_keys: Path, online_keys: Path, *, keys: int | None = None,
               threshold: int | None = None) -> list[Path]:
        """Stage a new root replacing all of ``role``'s keys by ``keys`` new ones (default: as many as now) with
        ``threshold`` (default: as now), written to the offline or online folder. The new root needs the old
        root's threshold and the new one's (``sign`` with both key sets). ``role = "root"`` with the same
        keys is not offered: every rotation also renews the root's expiry."""
        if role not in ("root", "targets", "snapshot", "timestamp"):
            raise ReleaseError(f"--role {role!r}: expected root, targets, snapshot or timestamp")
        md = self._staged("root") or self._latest("root")
        if self._staged("root") is None:
            md.signed.version += 1
        md.signed.expires = _now() + _dt.timedelta(days=self.expiry_days["root"])
        md.signatures.clear()
        keys = keys or len(md.signed.roles[role].keyids)
        threshold = threshold or min(md.signed.roles[role].threshold, keys)
        if not 1 <= threshold <= keys:
            raise ReleaseError(f"--threshold {threshold}: must be from 1 to the number of keys ({keys})")
        folder = Path(offline_keys if role in keymod.OFFLINE_ROLES else online_keys)
        for keyid in list(md.signed.roles[role].keyids):
            md.signed.revoke_key(keyid, role)
        paths = []
        for _ in range(keys):
            path, signer = keymod.generate(folder, role)
            md.signed.add_key(signer.public_key, role)
            paths.append(path)
        md.signed.roles[role].threshold = threshold
        self._stage("root", md)
        if role == "targets":       # the published targets carry the old key's signature: stage a re-signing
            self._stage("targets", self._targets_for_edit())
        return paths

    # ---- signing --------------------------------------------------------------------------------------------
    def sign(self, key_folder: Path) -> list[SignReport]:
        """Add the signatures of the keys in ``key_folder`` to what is staged; report each role's count."""
        found = keymod.load_folder(Path(key_folder), keymod.OFFLINE_ROLES)
        reports, added = [], 0
        staged_root = self._staged("root")
        if staged_root is not None:
            old = self._latest("root").signed
            allowed = set(old.roles["root"].keyids) | set(staged_root.signed.roles["root"].keyids)
            for s in found.get("root", []):
                if s.public_key.keyid in allowed:
                    staged_root.sign(s, append=True)
                    added += 1
            self._stage("root", staged_root)
            reports.append(self._count("root (old keys)", staged_root, old, "root"))
            reports.append(self._count("root (new keys)", staged_root, staged_root.signed, "root"))
        staged_targets = self._staged("targets")
        if staged_targets is not None:
            r = (staged_root or self._latest("root")).signed
            for s in found.get("targets", []):
                if s.public_key.keyid in r.roles["targets"].keyids:
                    staged_targets.sign(s, append=True)
                    added += 1
            self._stage("targets", staged_targets)
            reports.append(self._count("targets", staged_targets, r))
        if not reports:
            raise ReleaseError("nothing is staged to sign; run 'cnsctl release add' or 'release rotate' first")
        if not added:
            raise ReleaseError(f"{key_folder}: none of its keys is a root or targets key of this repository")
        return reports

    @staticmethod
    def _count(label: str, md: Metadata, delegator: Root, role: str | None = None) -> SignReport:
        role = role or label
        res = delegator.get_verification_result(role, md.signed_bytes, md.signatures)
        return SignReport(label, md.signed.version, len(res.signed), delegator.roles[role].threshold)

    # ---- publishing -----------------------------------------------------------------------------------------
    def publish(self, online_keys: Path, *, expires: dict[str, _dt.datetime] | None = None) -> dict[str, int]:
        """Publish what is staged and fully signed, then new snapshot and timestamp. ``expires`` overrides the
        expiry of snapshot/timestamp (tests, and a repository kept behind a short freeze window)."""
        online = keymod.load_folder(Path(online_keys), keymod.ONLINE_ROLES)
        staged_root, staged_targets = self._staged("root"), self._staged("targets")
        old_root = self._latest("root").signed
        new_root = staged_root.signed if staged_root else old_root
        try:
            if staged_root is not None:
                old_root.verify_delegate("root", staged_root.signed_bytes, staged_root.signatures)
                new_root.verify_delegate("root", staged_root.signed_bytes, staged_root.signatures)
            if staged_targets is not None:
                new_root.verify_delegate("targets", staged_targets.signed_bytes, staged_targets.signatures)
        except UnsignedMetadataError as exc:
            raise ReleaseError(f"not signed by enough keys yet ({exc}); run 'cnsctl release sign' with the "
                               "offline keys, then publish again") from None
        out = {}
        if staged_root is not None:
            self._write_published("root", staged_root)
            out["root"] = staged_root.signed.version
        if staged_targets is not None:
            self._write_published("targets", staged_targets)
            out["targets"] = staged_targets.signed.version
        out.update(self._publish_snapshot_timestamp(online, expires or {}, new_root))
        for role in ("root", "targets"):
            (self.staged_dir / f"{role}.json").unlink(missing_ok=True)
        return out

    def _publish_snapshot_timestamp(self, online, expires=None, root: Root | None = None) -> dict[str, int]:
        expires = expires or {}
        root = root or self._latest("root").signed
        now = _now()
        signers = {}
        for role in ("snapshot", "timestamp"):
            signers[role] = [s for s in online.get(role, []) if s.public_key.keyid in root.roles[role].keyids]
            if len(signers[role]) < root.roles[role].threshold:
                raise ReleaseError(f"the online keys folder has no {role} key of this repository's root")
        targets_v = self._latest("targets").signed.version
        try:
            snap_v = self._latest("snapshot").signed.version + 1
            ts_v = self._latest("timestamp").signed.version + 1
        except (ReleaseError, OSError):
            snap_v = ts_v = 1
        snap = Metadata(Snapshot(version=snap_v, expires=expires.get("snapshot") or
                                 now + _dt.timedelta(days=self.expiry_days["snapshot"]),
                                 meta={"targets.json": MetaFile(version=targets_v)}))
        for s in signers["snapshot"]:
            snap.sign(s, append=True)
        self._write_published("snapshot", snap)
        ts = Metadata(Timestamp(version=ts_v, expires=expires.get("timestamp") or
                                now + _dt.timedelta(days=self.expiry_days["timestamp"]),
                                snapshot_meta=MetaFile(version=snap_v)))
        for s in signers["timestamp"]:
            ts.sign(s, append=True)
        self._write_published("timestamp", ts)
        return {"snapshot": snap_v, "timestamp": ts_v}

    # ---- listing --------------------------------------------------------------------------------------------
    def expiries(self) -> dict[str, str]:
        """When each published role expires (targets and root need the offline keys to be renewed in time:
        ``release add`` or ``release rotate``; snapshot and timestamp by the periodic ``release publish``)."""
        return {role: self._latest(role).signed.expires.isoformat() for role in ("root", "targets", "snapshot",
                                                                                  "timestamp")}

    def list(self) -> list[dict]:
        rows = []
        for state, md in (("published", self._latest("targets")), ("staged", self._staged("targets"))):
            if md is None:
                continue
            for path, tf in sorted(md.signed.targets.items()):
                info = (tf.custom or {}).get("cns", {})
                if info.get("kind") in ("release", "agent"):
                    if state == "staged" and path in self._latest("targets").signed.targets:
                        continue
                    rows.append({"state": state, "kind": info["kind"], "target": path, "length": tf.length,
                                 "model": info.get("model", ""), "platform": info.get("platform", ""),
                                 "version": info.get("version", "")})
        return rows
