"""Which token release a token should get, and its files: what the holder's commands and the agent's
automatic update share (issue 14 item 4).

``offer(client, model, installed)``: the newest release of the model that is newer than the release the
token runs (``cns_spec.releases.release_of``; a token on no known release is offered the newest), with
the release it runs now; None when it is up to date. ``fetch(client, offer)``: download (verified by
TUF, chunk by chunk, resumable, seeded by what is kept) the new release's components and, when it
changes the firmware, the current release's firmware (the install's undo flashes it again: the token
keeps its old partition images itself); returns the journaled paths ``manifest``, ``new:NAME``,
``old:firmware``. ``files(manifest_path)`` reads them back: the manifest lives in the client's targets folder
(``targets/releases/MODEL/VERSION.json``), its components beside it under their target paths.

Works the same online and offline (the client's url a folder: the TUF repository copied to a stick).
Imports ``agent.updates.client`` and ``cns_spec.releases``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from agent.updates.client import MAX_MANIFEST, UpdateClient, UpdateError
from cns_spec import releases as spec


@dataclass(frozen=True)
class Offer:
    release: spec.Release
    current: spec.Release | None     # the release the token runs now (None: a mix or an unknown set)

    def describe(self) -> str:
        now = self.current.version if self.current else "no known release"
        return f"release {self.release.version} ({now} now)"


def offer(client: UpdateClient, model: str, installed: dict[str, str]) -> Offer | None:
    releases = client.token_releases(model)
    if not releases:
        return None
    now = spec.release_of(installed, releases)
    current = next((r for r in releases if r.version == now), None)
    newest = releases[-1]
    if current is not None and spec.parse_version(newest.version) <= spec.parse_version(current.version):
        return None
    return Offer(newest, current)


def fetch(client: UpdateClient, chosen: Offer) -> dict[str, str]:
    """Download what the install needs; every file checked against the signed metadata."""
    paths = {"manifest": str(client.targets_dir / spec.release_target_path(chosen.release.model,
                                                                            chosen.release.version))}
    for comp in chosen.release.components:
        paths[f"new:{comp.name}"] = str(client.download(comp.target))
    old = chosen.current.component("firmware") if chosen.current is not None else None
    if old is not None and "firmware" in chosen.release.versions():
        paths["old:firmware"] = str(client.download(old.target))
    return paths


def files(manifest: Path) -> tuple[spec.Release, dict[str, Path], Path]:
    """The release a downloaded manifest names, its component files and the client's targets folder."""
    manifest = Path(manifest)
    targets = manifest.parent.parent.parent
    if manifest.parent.parent.name != "releases" or manifest.suffix != ".json":
        raise UpdateError(f"{manifest}: not a downloaded release manifest (targets/releases/MODEL/VERSION.json)")
    try:
        if manifest.stat().st_size > MAX_MANIFEST:
            raise UpdateError(f"{manifest}: larger than any release manifest: refused")
        rel = spec.parse_manifest(manifest.read_bytes())
    except OSError as exc:
        raise UpdateError(f"{manifest}: cannot read it ({exc.strerror or exc}); download the release again") from None
    except spec.ManifestError as exc:
        raise UpdateError(f"{manifest}: {exc}") from None
    return rel, {c.name: targets / c.target for c in rel.components}, targets
