"""The agent's TUF client against a real nginx serving the repository cnsctl's code builds (issue 14 item 2).

Each attack is made against the served files themselves (what a compromised mirror or a man in the
middle can do); the client must refuse it, leave nothing downloaded, and keep trusting what it had.
"""
from __future__ import annotations

import datetime as dt
import json
import shutil
import time

import pytest

from agent.updates.client import UpdateClient, UpdateError
from tests.releases.conftest import image

FW = image(3 * 1024 * 1024 + 5, seed=1)      # 4 chunks, the last one short
CD = image(200_000, seed=2)


def _meta(served, name):
    return served.repo.meta_dir / name


def _blob(served, target: str):
    d, _, base = target.rpartition("/")
    [p] = (served.repo.targets_dir / d).glob(f"*.{base}")
    return p


def test_a_published_release_is_listed_and_downloaded_intact(served, make_release, new_client):
    make_release("1.0.0", {"firmware": ("2.1", FW), "cdrom": ("3.0", CD)}, constraints=[("cdrom>=3", "firmware>=2.1")])
    c = new_client()
    [rel] = c.token_releases("tok1")
    assert (rel.version, rel.versions()) == ("1.0.0", {"firmware": "2.1", "cdrom": "3.0"})
    assert rel.constraints[0].needs == "firmware>=2.1"
    assert c.download(rel.component("firmware").target).read_bytes() == FW
    assert c.download(rel.component("cdrom").target).read_bytes() == CD
    assert c.token_releases("other-model") == []
    assert any('"GET /metadata/timestamp.json' in line for line in served.server.access_log())


def test_a_tampered_target_is_refused_at_the_bad_chunk(served, make_release, new_client):
    rel = make_release("1.0.0", {"firmware": ("2.1", FW)})
    blob = _blob(served, rel.component("firmware").target)
    data = bytearray(blob.read_bytes())
    data[1024 * 1024 + 10] ^= 0x01                    # one bit in chunk 1 (of 0..3)
    blob.write_bytes(bytes(data))
    c = new_client()
    with pytest.raises(UpdateError, match=r"chunk 1 .*does not match its signed hash"):
        c.download(rel.component("firmware").target)
    assert not (c.targets_dir / rel.component("firmware").target).exists()
    assert not list((c.state_dir / "partial").glob("*"))
    # caught at once: chunk 0 and the bad chunk 1, not the whole file (plus at most one read block)
    assert c.fetcher.bytes_received <= 2 * 1024 * 1024 + 64 * 1024 + 10_000


def test_tampered_targets_metadata_is_refused(served, make_release, new_client):
    make_release("1.0.0", {"firmware": ("2.1", FW)})
    p = _meta(served, "2.targets.json")
    md = json.loads(p.read_text())
    path = "components/tok1/firmware-2.1"
    md["signed"]["targets"][path]["custom"]["cns"]["chunks"][0] = "0" * 64   # an attacker's own chunk list
    p.write_text(json.dumps(md))
    with pytest.raises(UpdateError, match="not signed by enough trusted keys"):
        new_client().refresh()


def test_expired_metadata_is_refused(served, make_release, new_client):
    past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
    make_release("1.0.0", {"firmware": ("2.1", FW)}, expires={"timestamp": past})
    with pytest.raises(UpdateError, match="expired"):
        new_client().refresh()


def test_a_rolled_back_timestamp_is_refused(served, make_release, new_client):
    make_release("1.0.0", {"firmware": ("2.1", FW)})
    old_ts = _meta(served, "timestamp.json").read_bytes()
    make_release("1.1.0", {"firmware": ("2.2", image(100_000, 3))})
    c = new_client()
    assert [r.version for r in c.token_releases("tok1")] == ["1.0.0", "1.1.0"]
    _meta(served, "timestamp.json").write_bytes(old_ts)           # the mirror goes back one publication
    c2 = new_client()                                               # same agent state, next check
    with pytest.raises(UpdateError, match="older metadata than this agent already trusts"):
        c2.refresh()


def test_frozen_metadata_is_refused_once_it_expires(served, make_release, new_client, tmp_path):
    soon = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) + dt.timedelta(seconds=2)
    make_release("1.0.0", {"firmware": ("2.1", FW)}, expires={"timestamp": soon})
    c = new_client()
    c.refresh()
    frozen = tmp_path / "frozen"
    shutil.copytree(served.repo.served / "metadata", frozen)          # the mirror stops following
    make_release("1.1.0", {"firmware": ("2.2", image(100_000, 3))})   # central IT publishes again
    shutil.rmtree(served.repo.served / "metadata")
    shutil.copytree(frozen, served.repo.served / "metadata")          # ...but the mirror serves its frozen copy
    time.sleep(max(0.0, (soon - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 1.1)
    with pytest.raises(UpdateError, match="expired"):
        new_client().refresh()


def test_mix_and_match_targets_is_refused(served, make_release, new_client):
    make_release("1.0.0", {"firmware": ("2.1", FW)})
    make_release("1.1.0", {"firmware": ("2.2", image(100_000, 3))})
    # the snapshot names targets version 3; the attacker serves version 2's (validly signed) content in its place
    _meta(served, "3.targets.json").write_bytes(_meta(served, "2.targets.json").read_bytes())
    with pytest.raises(UpdateError, match="Expected targets v3, got v2"):
        new_client().refresh()


def test_old_snapshot_with_new_timestamp_is_refused(served, make_release, new_client):
    make_release("1.0.0", {"firmware": ("2.1", FW)})
    make_release("1.1.0", {"firmware": ("2.2", image(100_000, 3))})
    _meta(served, "3.snapshot.json").write_bytes(_meta(served, "2.snapshot.json").read_bytes())
    with pytest.raises(UpdateError, match="Expected snapshot version 3, got 2"):
        new_client().refresh()


def test_the_client_follows_a_root_and_targets_key_rotation(served, make_release, new_client):
    make_release("1.0.0", {"firmware": ("2.1", FW)})
    c = new_client()
    c.refresh()
    old_targets_keys = sorted(served.offline.glob("targets-*.pem"))
    served.repo.rotate("root", served.offline, served.online)
    served.repo.rotate("targets", served.offline, served.online)
    reports = {r.role: r for r in served.repo.sign(served.offline)}     # old root key + new root key sign
    assert all(reports[k].signatures >= reports[k].threshold for k in ("root (old keys)", "root (new keys)", "targets"))
    served.repo.publish(served.online)
    for p in old_targets_keys:
        p.unlink()                                                       # the old targets key is retired
    make_release("1.1.0", {"firmware": ("2.2", image(100_000, 3))})
    c2 = new_client()
    assert [r.version for r in c2.token_releases("tok1")] == ["1.0.0", "1.1.0"]
    trusted = json.loads((c2.meta_dir / "root.json").read_text())["signed"]
    assert trusted["version"] == 2


def test_a_root_not_signed_by_the_old_root_keys_is_refused(served, make_release, new_client, tmp_path):
    """An attacker who makes a root v2 with their own keys (and re-signs everything) is not followed."""
    from personalizer.releases.repository import ReleaseRepo
    make_release("1.0.0", {"firmware": ("2.1", FW)})
    c = new_client()
    c.refresh()
    evil = ReleaseRepo.init(tmp_path / "evil", tmp_path / "evil-off", tmp_path / "evil-on")
    evil.rotate("root", tmp_path / "evil-off", tmp_path / "evil-on")   # an evil v2 root
    evil.sign(tmp_path / "evil-off")
    evil.publish(tmp_path / "evil-on")
    shutil.copy(evil.meta_dir / "2.root.json", served.repo.meta_dir / "2.root.json")
    with pytest.raises(UpdateError, match="root was signed by 0/1 keys"):
        new_client().refresh()


def test_targets_signed_by_a_revoked_key_are_refused(served, make_release, new_client):
    """After rotation, the retired targets key (say it leaked) cannot publish anything the agent accepts."""
    from personalizer.releases import keys as keymod
    from tuf.api.metadata import Metadata
    make_release("1.0.0", {"firmware": ("2.1", FW)})
    leaked = keymod.load(sorted(served.offline.glob("targets-*.pem"))[0])
    served.repo.rotate("targets", served.offline, served.online)
    served.repo.sign(served.offline)
    served.repo.publish(served.online)
    new_client().refresh()
    # the attacker re-publishes targets signed by the leaked key, with the mirror's (online) keys for the rest
    rel = make_release("1.1.0", {"firmware": ("2.2", image(100_000, 3))})
    p = sorted(served.repo.meta_dir.glob("*.targets.json"), key=lambda x: int(x.name.split(".")[0]))[-1]
    md = Metadata.from_file(str(p))
    md.signed.targets[rel.component("firmware").target].length += 0   # same content, attacker's signature
    md.sign(leaked)
    p.write_bytes(md.to_bytes())
    with pytest.raises(UpdateError, match="not signed by enough trusted keys"):
        new_client().refresh()


def test_garbage_from_the_server_is_a_clear_refusal(served, make_release, new_client):
    make_release("1.0.0", {"firmware": ("2.1", FW)})
    _meta(served, "timestamp.json").write_bytes(b"<html>502 Bad Gateway</html>")
    with pytest.raises(UpdateError) as exc:
        new_client().refresh()
    assert "\n" not in str(exc.value) and "update check failed" in str(exc.value)


def test_an_agent_without_a_trusted_root_says_how_to_get_one(tmp_path):
    with pytest.raises(UpdateError, match="no trusted root.json"):
        UpdateClient(tmp_path / "s", "http://127.0.0.1:9")


def test_a_release_copied_to_a_folder_installs_with_the_same_checks(served, make_release, tmp_path):
    rel = make_release("1.0.0", {"firmware": ("2.1", FW)})
    usb = tmp_path / "usb stick"
    shutil.copytree(served.repo.served, usb)
    c = UpdateClient(tmp_path / "offline-agent", str(usb), bootstrap_root=served.first_root())
    [got] = c.token_releases("tok1")
    assert c.download(got.component("firmware").target).read_bytes() == FW
    # a stick whose image was altered is refused like a mirror would be
    d, _, base = rel.component("firmware").target.rpartition("/")
    [blob] = (usb / "targets" / d).glob(f"*.{base}")
    blob.write_bytes(FW[:-1] + b"\0")
    c2 = UpdateClient(tmp_path / "offline-agent-2", str(usb), bootstrap_root=served.first_root())
    with pytest.raises(UpdateError, match="chunk 3 .*does not match its signed hash"):
        c2.download(rel.component("firmware").target)


def test_a_rotation_to_two_of_three_root_keys_needs_both_thresholds(served, make_release, new_client, tmp_path):
    from personalizer import cnsctl
    from personalizer.releases.repository import ReleaseError
    make_release("1.0.0", {"firmware": ("2.1", FW)})
    new_client().refresh()
    old_root_keys = tmp_path / "old-root-key"
    old_root_keys.mkdir()
    for p in served.offline.glob("root-*.pem"):
        p.rename(old_root_keys / p.name)
    assert cnsctl.main(["release", "rotate", "--repo", str(served.repo.root), "--role", "root", "--keys", "3",
                        "--threshold", "2", "--offline-keys", str(served.offline),
                        "--online-keys", str(served.online)]) == 0
    new_keys = sorted(served.offline.glob("root-*.pem"))
    assert len(new_keys) == 3
    served.repo.sign(old_root_keys)                           # the old root's 1-of-1
    with pytest.raises(ReleaseError, match="not signed by enough keys"):
        served.repo.publish(served.online)                    # the new root's 2-of-3 is still missing
    one = tmp_path / "holder-1"
    one.mkdir()
    new_keys[0].rename(one / new_keys[0].name)                # each holder signs from their own medium
    served.repo.sign(one)
    with pytest.raises(ReleaseError, match="not signed by enough keys"):
        served.repo.publish(served.online)
    served.repo.sign(served.offline)                          # holders 2 and 3
    served.repo.publish(served.online)
    c = new_client()
    c.refresh()
    trusted = json.loads((c.meta_dir / "root.json").read_text())["signed"]
    assert trusted["version"] == 2 and trusted["roles"]["root"]["threshold"] == 2


def test_a_target_already_downloaded_and_intact_is_not_fetched_again(served, make_release, new_client):
    """The agent downloads a release in the background; the holder's ``update apply`` then finds it there
    (length and hashes checked against the signed metadata) instead of fetching 700 MB again."""
    make_release("1.0.0", {"cdrom": ("3.0", CD)})
    c = new_client()
    [rel] = c.token_releases("tok1")
    path = c.download(rel.component("cdrom").target)
    before = c.fetcher.bytes_received
    assert c.download(rel.component("cdrom").target) == path and c.fetcher.bytes_received == before
    data = bytearray(path.read_bytes())
    data[10] ^= 1
    path.write_bytes(bytes(data))                              # a damaged local copy is fetched again
    assert c.download(rel.component("cdrom").target).read_bytes() == CD and c.fetcher.bytes_received > before
