"""The resumable fetcher (issue 14 item 3) against nginx: range requests, resume, per-chunk checks, proxy, progress."""
from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest

from agent.updates.client import UpdateError
from tests.conftest import ROOT
from tests.releases.conftest import image
from tests.releases.netfaults import FaultyProxy

MiB = 1024 * 1024
BIG = image(6 * MiB + 12345, seed=7)       # 7 chunks


@pytest.fixture
def proxy():
    p = FaultyProxy()
    yield p
    p.close()


def _gets(served, name: str) -> list[tuple[int, str, int]]:
    """(status, range header, body bytes sent) of each GET of a target whose name ends with ``name``."""
    out = []
    for line in served.server.access_log():
        m = re.match(r'(\d+) "GET (\S+) [^"]*" range="([^"]*)" sent=(\d+)', line)
        if m and m.group(2).endswith(name):
            out.append((int(m.group(1)), m.group(3), int(m.group(4))))
    return out


def test_a_dropped_connection_resumes_with_a_range_request_through_the_proxy(served, make_release, new_client, proxy):
    rel = make_release("1.0.0", {"firmware": ("2.1", BIG)})
    c = new_client(proxy=proxy.url)
    c.refresh()
    c.info(rel.component("firmware").target)
    before = c.fetcher.bytes_received
    proxy.cut(responses=2, after_bytes=int(2.5 * MiB))          # the next two downloads break mid-way
    got = c.download(rel.component("firmware").target)
    assert got.read_bytes() == BIG
    gets = _gets(served, ".firmware-2.1")
    assert [g[0] for g in gets] == [200, 206, 206]
    assert gets[1][1] == "bytes=2097152-" and gets[2][1] == "bytes=4194304-"   # from the last verified chunk
    # nothing received twice but the two torn chunks (nginx's own count includes what the proxy dropped)
    assert c.fetcher.bytes_received - before <= len(BIG) + 2 * MiB
    assert all(line.startswith("GET http://127.0.0.1:") for line in proxy.seen)   # every request via the proxy
    assert any("timestamp.json" in line for line in proxy.seen)


def test_an_agent_killed_mid_download_resumes_after_restart(served, make_release, new_client, tmp_path):
    rel = make_release("1.0.0", {"firmware": ("2.1", BIG)})
    target = rel.component("firmware").target
    state = tmp_path / "agent"
    (tmp_path / "root.json").write_bytes(served.first_root())
    child = textwrap.dedent(f"""
        import os, signal
        from pathlib import Path
        from agent.updates.client import UpdateClient
        def progress(done, total):
            if done >= 3 * {MiB}:
                os.kill(os.getpid(), signal.SIGKILL)          # the agent dies: no cleanup runs
        c = UpdateClient(Path({str(state)!r}), {served.url!r},
                         bootstrap_root=Path({str(tmp_path / 'root.json')!r}).read_bytes(), progress=progress)
        c.download({target!r})
    """)
    r = subprocess.run([sys.executable, "-c", child], cwd=ROOT, timeout=60)
    assert r.returncode == -9
    [part] = (state / "partial").glob("*.part")
    assert part.stat().st_size == 3 * MiB
    c = new_client("agent")                                         # the restarted agent
    assert c.download(target).read_bytes() == BIG
    gets = _gets(served, ".firmware-2.1")
    assert gets[-1][:2] == (206, f"bytes={3 * MiB}-")
    assert not list((state / "partial").glob("*"))


def test_a_partial_file_damaged_on_disk_is_cut_back_to_its_good_chunks(served, make_release, new_client, tmp_path):
    rel = make_release("1.0.0", {"firmware": ("2.1", BIG)})
    target = rel.component("firmware").target
    c = new_client()
    url = c._url_of(c.info(target))
    part = c.fetcher.partial_path(url)
    part.parent.mkdir(parents=True, exist_ok=True)
    bad = bytearray(BIG[:3 * MiB + 500])
    bad[2 * MiB + 3] ^= 0xFF                                        # chunk 2 rotted on disk; chunk 3 is torn
    part.write_bytes(bytes(bad))
    assert c.download(target).read_bytes() == BIG
    assert _gets(served, ".firmware-2.1")[-1][:2] == (206, f"bytes={2 * MiB}-")


def test_a_server_sending_more_than_the_signed_length_is_cut_off(served, make_release, new_client):
    signed = image(2 * MiB, 3)
    rel = make_release("1.0.0", {"firmware": ("2.1", signed)})
    target = rel.component("firmware").target
    d, _, base = target.rpartition("/")
    [blob] = (served.repo.targets_dir / d).glob(f"*.{base}")
    with open(blob, "ab") as f:                                    # an endless file, as far as the agent can tell
        f.write(image(20 * MiB, 4))
    c = new_client()
    c.info(target)
    before = c.fetcher.bytes_received
    assert c.download(target).read_bytes() == signed               # the signed bytes, verified; nothing more kept
    assert c.fetcher.bytes_received - before <= 2 * MiB + 64 * 1024   # reading stopped at the signed length


def test_progress_is_reported_per_chunk_up_to_the_whole_length(served, make_release, new_client):
    rel = make_release("1.0.0", {"firmware": ("2.1", BIG)})
    seen = []
    c = new_client(progress=lambda done, total: seen.append((done, total)))
    c.download(rel.component("firmware").target)
    assert seen[-1] == (len(BIG), len(BIG))
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) == 7


def test_a_missing_target_file_is_an_http_error_and_nothing_is_kept(served, make_release, new_client):
    rel = make_release("1.0.0", {"firmware": ("2.1", BIG)})
    target = rel.component("firmware").target
    d, _, base = target.rpartition("/")
    [blob] = (served.repo.targets_dir / d).glob(f"*.{base}")
    blob.unlink()
    c = new_client()
    with pytest.raises(UpdateError, match="HTTP 404"):
        c.download(target)
    assert not (c.targets_dir / target).exists()


def test_a_stalled_server_is_given_up_after_the_timeout_and_retries_with_a_clear_error(served, make_release,
                                                                                      new_client, proxy):
    rel = make_release("1.0.0", {"firmware": ("2.1", BIG)})
    c = new_client(proxy=proxy.url, timeout_s=0.5, retries=1)
    c.refresh()
    c.info(rel.component("firmware").target)
    proxy.stall(responses=2, after_bytes=MiB + 5000, seconds=10)
    with pytest.raises(UpdateError, match="too slow"):
        c.download(rel.component("firmware").target)
    assert not (c.targets_dir / rel.component("firmware").target).exists()
    # what was verified stays for the next attempt: it resumes instead of starting over
    proxy.cut(0, 0)
    assert c.download(rel.component("firmware").target).read_bytes() == BIG
    assert _gets(served, ".firmware-2.1")[-1][1] == "bytes=2097152-"     # two stalled tries verified 1 MiB each


def test_a_new_release_downloads_only_the_changed_chunks(served, make_release, new_client):
    old = image(8 * MiB + 777, seed=11)
    new = bytearray(old)
    new[3 * MiB + 100: 3 * MiB + 200] = b"\x55" * 100            # one block changed in chunk 3
    new[7 * MiB + 5] ^= 1                                       # and one byte in chunk 7
    new = bytes(new)
    r1 = make_release("1.0.0", {"cdrom": ("3.0", old)})
    r2 = make_release("1.1.0", {"cdrom": ("3.1", new)})
    c = new_client()
    c.download(r1.component("cdrom").target)                    # the token's current image, kept by the agent
    before = c.fetcher.bytes_received
    assert c.download(r2.component("cdrom").target).read_bytes() == new
    received = c.fetcher.bytes_received - before
    assert received <= 2 * MiB + 64 * 1024                       # the two changed chunks (plus one read block)
    assert c.fetcher.bytes_reused == 6 * MiB + 777                 # the seven unchanged chunks, copied locally
    ranges = [g[1] for g in _gets(served, ".cdrom-3.1")]
    assert ranges == [f"bytes={3 * MiB}-{4 * MiB - 1}", f"bytes={7 * MiB}-{8 * MiB - 1}"]


def test_a_seed_whose_chunk_rotted_is_not_trusted_for_that_chunk(served, make_release, new_client, tmp_path):
    data = image(4 * MiB, seed=12)
    rel = make_release("1.0.0", {"cdrom": ("3.0", data)})
    seed = tmp_path / "seed.img"
    bad = bytearray(data)
    bad[MiB + 1] ^= 0xFF
    seed.write_bytes(bytes(bad))
    c = new_client()
    assert c.download(rel.component("cdrom").target, seed=seed).read_bytes() == data
    assert [g[1] for g in _gets(served, ".cdrom-3.0")] == [f"bytes={MiB}-{2 * MiB - 1}"]
