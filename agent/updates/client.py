"""The agent's TUF client: ngclient's ``Updater`` over the resumable ``RangeFetcher``.

``UpdateClient(state_dir, url)`` keeps the trusted metadata in ``state_dir/metadata`` (the first
root comes from ``bootstrap_root``: the root.json central IT ships with the agent or the station
config), partial downloads in ``state_dir/partial`` and verified targets in ``state_dir/targets``.
``refresh()`` runs TUF's client workflow (root rotation, timestamp, snapshot, targets: expiry,
rollback, signature thresholds, mix-and-match checks are ngclient's); ``token_releases(model)`` and
``agent_builds(platform)`` list what the verified targets offer; ``download(path)`` fetches one target,
checked chunk by chunk and then whole (a copy already there that matches the signed length and hashes
is used as it is). Every refusal is an ``UpdateError`` with one line.

``url`` is the repository's base (``{url}/metadata/``, ``{url}/targets/``) on any plain HTTP file
server, or a folder holding the same tree (offline: a release copied to a folder or a USB stick).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from tuf.api import exceptions
from tuf.api.metadata import Metadata, TargetFile
from tuf.ngclient import Updater, UpdaterConfig

from agent.updates.fetcher import ChunkPlan, RangeFetcher
from cns_spec import releases as spec

MAX_MANIFEST = 256 * 1024


class UpdateError(Exception):
    """A refused or failed update step: one line saying what and what to do."""


def _explain(exc: Exception) -> str:
    name = type(exc).__name__
    text = str(exc) or name
    if isinstance(exc, exceptions.ExpiredMetadataError):
        return f"the release repository's metadata has expired ({text}); central IT must publish again"
    if isinstance(exc, exceptions.BadVersionNumberError):
        return f"the release repository offers older metadata than this agent already trusts ({text}): refused"
    if isinstance(exc, exceptions.UnsignedMetadataError):
        return f"metadata not signed by enough trusted keys ({text}): refused"
    if isinstance(exc, exceptions.LengthOrHashMismatchError):
        return f"a file does not match its signed length or hash ({text}): refused"
    if isinstance(exc, exceptions.DownloadHTTPError):
        return f"the release server answered {text}"
    if isinstance(exc, exceptions.SlowRetrievalError):
        return f"the release server is too slow ({text}); try again later"
    if isinstance(exc, exceptions.DownloadError):
        return f"download failed: {text}"
    if isinstance(exc, exceptions.RepositoryError):
        return f"the release repository is not trustworthy ({name}: {text}): refused"
    return f"{name}: {text}"


class UpdateClient:
    def __init__(self, state_dir: Path, url: str, *, proxy: str | None = None, bootstrap_root: bytes | None = None,
                 progress: Callable[[int, int], None] | None = None, retries: int = 5, timeout_s: float = 30.0):
        self.state_dir = Path(state_dir)
        self.meta_dir = self.state_dir / "metadata"
        self.targets_dir = self.state_dir / "targets"
        self.meta_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.targets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if bootstrap_root is None and not (self.meta_dir / "root.json").is_file():
            raise UpdateError(f"{self.meta_dir}: no trusted root.json yet; install the one central IT publishes "
                              "(cns-agent update --trust ROOT.json)")
        if "://" not in url:              # a folder: the TUF repository copied to a USB stick, read with the same checks
            url = Path(url).resolve().as_uri()
        self.url = url.rstrip("/")
        self.fetcher = RangeFetcher(self.state_dir / "partial", proxy=proxy, progress=progress, retries=retries,
                                    timeout_s=timeout_s)
        try:
            self.updater = Updater(str(self.meta_dir), f"{self.url}/metadata/", str(self.targets_dir),
                                   f"{self.url}/targets/", self.fetcher, UpdaterConfig(app_user_agent="cns-agent"),
                                   bootstrap=bootstrap_root)
        except (exceptions.RepositoryError, ValueError) as exc:
            raise UpdateError(f"the trusted root is not usable: {_explain(exc)}") from None
        self._refreshed = False

    def refresh(self) -> None:
        try:
            self.updater.refresh()
        except Exception as exc:  # noqa: BLE001 - every ngclient refusal becomes one line
            if not isinstance(exc, (exceptions.RepositoryError, exceptions.DownloadError, OSError, ValueError)):
                raise
            raise UpdateError(f"update check failed: {_explain(exc)}") from None
        self._refreshed = True

    def _target_paths(self) -> list[str]:
        """Paths offered by the targets metadata refresh() just verified (ngclient keeps it in meta_dir)."""
        if not self._refreshed:
            self.refresh()
        md = Metadata.from_file(str(self.meta_dir / "targets.json"))
        return sorted(md.signed.targets)

    def info(self, path: str) -> TargetFile:
        if not self._refreshed:
            self.refresh()
        try:
            ti = self.updater.get_targetinfo(path)
        except exceptions.RepositoryError as exc:
            raise UpdateError(f"update check failed: {_explain(exc)}") from None
        if ti is None:
            raise UpdateError(f"{path}: not offered by the release repository")
        return ti

    def _previous_version(self, path: str) -> Path | None:
        """A component downloaded earlier (``components/M/NAME-OLDVERSION``): the seed for a delta download."""
        d, _, base = path.rpartition("/")
        if not path.startswith("components/") or "-" not in base:
            return None
        name = base.rsplit("-", 1)[0]
        older = [p for p in (self.targets_dir / d).glob(f"{name}-*") if p.name != base and p.is_file()]
        return max(older, key=lambda p: p.stat().st_mtime) if older else None

    def download(self, path: str, dest: Path | None = None, seed: Path | None = None) -> Path:
        """Download ``path`` (verified by chunk and whole) to ``dest`` or the targets folder. Chunks that
        ``seed`` (default: the previous version of the same component, if kept) already has are not
        downloaded again."""
        ti = self.info(path)
        cns = (ti.custom or {}).get("cns") if isinstance(ti.custom, dict) else None
        url = self._url_of(ti)
        if isinstance(cns, dict) and isinstance(cns.get("chunks"), list):
            try:
                self.fetcher.expect(url, ChunkPlan(ti.length, int(cns["chunk_size"]), tuple(cns["chunks"])),
                                    seed=seed or self._previous_version(path))
            except (exceptions.RepositoryError, KeyError, TypeError, ValueError) as exc:
                raise UpdateError(f"{path}: its signed chunk list is unusable ({exc}): refused") from None
        if dest is None:
            parts = Path(path).parts
            if not parts or Path(path).is_absolute() or ".." in parts:
                raise UpdateError(f"{path!r}: not a target path this agent writes (absolute or with ..): refused")
        dest = Path(dest) if dest else self.targets_dir / path
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            cached = self.updater.find_cached_target(ti, str(dest))   # already here, length and hashes checked
            if cached:
                return Path(cached)
            return Path(self.updater.download_target(ti, str(dest)))
        except (exceptions.RepositoryError, exceptions.DownloadError) as exc:
            dest.unlink(missing_ok=True)
            raise UpdateError(f"{path}: {_explain(exc)}") from None

    def _url_of(self, ti: TargetFile) -> str:
        dirname, sep, base = ti.path.rpartition("/")
        return f"{self.url}/targets/{dirname}{sep}{ti.hashes['sha256']}.{base}"

    # ---- what the repository offers ------------------------------------------------------------------------
    def token_releases(self, model: str) -> list[spec.Release]:
        """Every release published for ``model``, oldest first (manifests downloaded and verified)."""
        prefix = f"releases/{model}/"
        out = []
        for path in self._target_paths():
            if not path.startswith(prefix):
                continue
            ti = self.info(path)
            if ti.length > MAX_MANIFEST:
                raise UpdateError(f"{path}: a release manifest larger than {MAX_MANIFEST} bytes: refused")
            raw = self.download(path).read_bytes()
            try:
                rel = spec.parse_manifest(raw)
            except spec.ManifestError as exc:
                raise UpdateError(f"{path}: {exc}") from None
            if rel.model != model:
                raise UpdateError(f"{path}: names model {rel.model}, not {model}: refused")
            out.append(rel)
        return sorted(out, key=lambda r: spec.parse_version(r.version))

    def agent_builds(self, platform: str) -> list[tuple[str, str]]:
        """``(version, target path)`` of each agent build for ``platform``, oldest first."""
        prefix = f"agent/{platform}/"
        out = []
        for path in self._target_paths():
            if path.startswith(prefix) and path.endswith("/cns-agent"):
                version = path[len(prefix):].split("/", 1)[0]
                try:
                    spec.parse_version(version)
                except spec.ManifestError:
                    continue
                out.append((version, path))
        return sorted(out, key=lambda v: spec.parse_version(v[0]))


def trust_root(state_dir: Path, root_json: bytes) -> None:
    """Install the first trusted root (checked to be a self-signed TUF root; later roots come by rotation)."""
    try:
        md = Metadata.from_bytes(root_json)
        md.signed.verify_delegate("root", md.signed_bytes, md.signatures)
    except Exception as exc:  # noqa: BLE001 - any parse or signature failure is the same refusal
        raise UpdateError(f"not a self-signed TUF root: {exc}") from None
    meta = Path(state_dir) / "metadata"
    if (meta / "root.json").exists():
        raise UpdateError(f"{meta / 'root.json'} exists: a trusted root is replaced only by rotation")
    meta.mkdir(parents=True, exist_ok=True, mode=0o700)
    (meta / "root.json").write_bytes(root_json)


def known_releases(state_dir: Path, model: str) -> list[spec.Release]:
    """The release manifests of ``model`` this agent has downloaded (ngclient writes a target into
    ``state_dir/targets`` only once its length and hashes match the signed metadata); unreadable ones are
    skipped. What a token runs as a whole is named against these (``agent.ops.token_release.release_of``)."""
    out = []
    for p in sorted((Path(state_dir) / "targets" / "releases" / model).glob("*.json")):
        try:
            if p.stat().st_size <= MAX_MANIFEST:
                rel = spec.parse_manifest(p.read_bytes())
                if rel.model == model:
                    out.append(rel)
        except (OSError, spec.ManifestError):
            continue
    return out
