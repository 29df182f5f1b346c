"""A python-tuf ``FetcherInterface`` that resumes: HTTP range requests, per-chunk hash checks, progress.

Metadata is fetched whole (``_fetch``; ngclient bounds its length). A target whose signed chunk hashes
were announced with ``expect()`` is downloaded by ``download_file`` into a partial file kept under
``partial_dir`` (named after the URL, which is content-addressed: the hash-prefixed target name):

* on start, the chunks already on disk are hashed again and the file is cut after the last good one,
  so an agent restart resumes where the previous process stopped;
* each request asks ``Range: bytes=OFFSET-``; a dropped connection is retried from the current offset
  (``retries`` times, with a short backoff), never from zero;
* every chunk is checked against its signed hash as soon as it is complete: a bad chunk is caught
  after at most one chunk (1 MiB), the partial file is removed and ``DownloadError`` raised;
* with a seed (the previous version of the same image kept locally), chunks whose signed hash the seed
  has are copied from it and only the runs of changed chunks are requested (``Range: bytes=A-B``);
* reading stops at the target's signed length (a server sending an endless file is cut off there).

``file://`` URLs (a release copied to a folder or a USB stick) go through the same checks.
``progress(done, total)`` is called after each chunk. ``proxy`` is an ``http://HOST:PORT`` URL
(the station config's ``[updates] proxy``); the environment's proxy variables are not used.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import urllib3
from tuf.api import exceptions
from tuf.ngclient.fetcher import FetcherInterface

log = logging.getLogger(__name__)
_READ = 64 * 1024


@dataclass(frozen=True)
class ChunkPlan:
    length: int
    chunk_size: int
    chunks: tuple[str, ...]


class ChunkMismatch(exceptions.DownloadError):
    """A chunk's bytes do not match the hash signed for it."""


class _FileResponse:
    """A ``file://`` URL read like an HTTP response (a release copied to a folder or a USB stick): the same
    range, length and chunk checks apply."""

    def __init__(self, f, status: int, length: int | None = None):
        self._f, self.status, self._left = f, status, length

    @classmethod
    def open(cls, url: str, headers: dict) -> "_FileResponse":
        from urllib.parse import unquote, urlsplit
        path = Path(unquote(urlsplit(url).path))
        try:
            f = open(path, "rb")
        except FileNotFoundError:
            raise exceptions.DownloadHTTPError(f"{path}: no such file (HTTP 404 equivalent)", 404) from None
        except OSError as exc:
            raise exceptions.DownloadError(f"{path}: cannot read: {exc.strerror}") from None
        rng = headers.get("Range", "")
        if rng.startswith("bytes="):
            first, _, last = rng[6:].partition("-")
            f.seek(int(first))
            return cls(f, 206, int(last) - int(first) + 1 if last else None)
        return cls(f, 200)

    def stream(self, n: int):
        left = self._left
        while left is None or left > 0:
            block = self._f.read(n if left is None else min(n, left))
            if not block:
                return
            if left is not None:
                left -= len(block)
            yield block

    def release_conn(self) -> None:
        self._f.close()


class RangeFetcher(FetcherInterface):
    def __init__(self, partial_dir: Path, *, proxy: str | None = None, timeout_s: float = 30.0, retries: int = 5,
                 backoff_s: float = 0.2, progress: Callable[[int, int], None] | None = None,
                 user_agent: str = "cns-agent"):
        self.partial_dir = Path(partial_dir)
        self.retries = retries
        self.backoff_s = backoff_s
        self.progress = progress
        self.timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
        headers = {"User-Agent": user_agent}
        # retries=False: we retry ourselves, from the offset reached, never replaying a whole file
        self._http = (urllib3.ProxyManager(proxy, headers=headers, retries=False) if proxy
                      else urllib3.PoolManager(headers=headers, retries=False))
        self._plans: dict[str, ChunkPlan] = {}
        self._seeds: dict[str, Path] = {}
        self._seed_index: dict[str, dict[str, int]] = {}
        self.bytes_reused = 0          # bytes copied from a seed instead of downloaded
        self.requests = 0              # HTTP requests made (for tests and the benchmark)
        self.bytes_received = 0        # body bytes received

    def expect(self, url: str, plan: ChunkPlan, seed: Path | None = None) -> None:
        """Announce the signed chunk hashes of the target at ``url`` (from its TUF ``custom`` field), and
        optionally a ``seed``: an older version of it on this machine whose matching chunks are copied
        instead of downloaded (each still checked against the signed hash)."""
        n = -(-plan.length // plan.chunk_size) if plan.length else 0
        if plan.chunk_size < 1024 or len(plan.chunks) != n:
            raise exceptions.RepositoryError(f"{url}: its chunk list does not match its length")
        self._plans[url] = plan
        if seed is not None:
            self._seeds[url] = Path(seed)

    def _get(self, url: str, headers: dict | None = None):
        self.requests += 1
        if url.startswith("file://"):
            return _FileResponse.open(url, headers or {})
        try:
            resp = self._http.request("GET", url, headers=headers or {}, preload_content=False,
                                      timeout=self.timeout, redirect=False)
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError(f"{url}: no answer in time") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: cannot connect: {exc}") from exc
        if resp.status >= 400:
            resp.release_conn()
            raise exceptions.DownloadHTTPError(f"{url}: HTTP {resp.status}", resp.status)
        return resp

    def _fetch(self, url: str) -> Iterator[bytes]:
        resp = self._get(url)
        try:
            for block in resp.stream(_READ):
                self.bytes_received += len(block)
                yield block
        except urllib3.exceptions.TimeoutError as exc:
            raise exceptions.SlowRetrievalError(f"{url}: stalled") from exc
        except urllib3.exceptions.HTTPError as exc:
            raise exceptions.DownloadError(f"{url}: connection lost: {exc}") from exc
        finally:
            resp.release_conn()

    # ---- resumable targets --------------------------------------------------------------------------------
    def partial_path(self, url: str) -> Path:
        return self.partial_dir / (hashlib.sha256(url.encode()).hexdigest()[:32] + ".part")

    def _good_prefix(self, path: Path, plan: ChunkPlan) -> int:
        """Bytes at the start of ``path`` made of whole chunks that match their hashes; the rest is cut."""
        good = 0
        try:
            with open(path, "r+b") as f:
                for i, want in enumerate(plan.chunks):
                    block = f.read(plan.chunk_size)
                    full = plan.chunk_size if i < len(plan.chunks) - 1 else plan.length - i * plan.chunk_size
                    if len(block) < full or hashlib.sha256(block).hexdigest() != want:
                        break
                    good += len(block)
                f.truncate(good)
        except FileNotFoundError:
            return 0
        return good

    @contextlib.contextmanager
    def download_file(self, url: str, max_length: int) -> Iterator[IO]:
        plan = self._plans.get(url)
        if plan is None:
            with super().download_file(url, max_length) as f:
                yield f
            return
        if plan.length > max_length:
            raise exceptions.DownloadLengthMismatchError(f"{url}: longer than its signed length")
        self.partial_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.partial_path(url)
        offset = self._good_prefix(path, plan)
        if offset:
            log.info("resuming %s at byte %d of %d", url, offset, plan.length)
        attempts = 0
        while offset < plan.length:
            try:
                offset = self._download_from(url, path, plan, offset)
            except ChunkMismatch:
                path.unlink(missing_ok=True)
                raise
            except (exceptions.SlowRetrievalError, exceptions.DownloadError) as exc:
                if isinstance(exc, exceptions.DownloadHTTPError) or attempts >= self.retries:
                    raise
                attempts += 1
                log.info("download of %s interrupted (%s); resuming at byte %d", url, exc, offset)
                time.sleep(self.backoff_s * attempts)
                offset = self._good_prefix(path, plan)
        self._seed_index.pop(url, None)
        f = open(path, "rb")
        try:
            yield f
        finally:
            f.close()
            path.unlink(missing_ok=True)    # verified and copied by the caller, or refused: not kept either way

    def _seed_chunks(self, url: str, plan: ChunkPlan) -> dict[str, int]:
        """Chunk hash → offset in the seed file (an older version of the same target kept locally)."""
        seed = self._seeds.get(url)
        if seed is None:
            return {}
        if url in self._seed_index:
            return self._seed_index[url]
        out: dict[str, int] = self._seed_index.setdefault(url, {})
        try:
            with open(seed, "rb") as f:
                pos = 0
                while block := f.read(plan.chunk_size):
                    out.setdefault(hashlib.sha256(block).hexdigest(), pos)
                    pos += len(block)
        except OSError:
            return {}
        return out

    def _download_from(self, url: str, path: Path, plan: ChunkPlan, offset: int) -> int:
        """From ``offset`` (a chunk boundary): copy the chunks the seed already has, then download the next run
        of missing chunks with one range request, until the end or the connection breaks; return the offset of
        verified bytes on disk. Raises ``ChunkMismatch`` at the first chunk that is wrong."""
        have = self._seed_chunks(url, plan)
        cs, n = plan.chunk_size, len(plan.chunks)
        with open(path, "r+b" if offset else "wb") as out:
            out.truncate(offset)
            out.seek(offset)
            index = offset // cs
            if have:
                with open(self._seeds[url], "rb") as seed:
                    while index < n and plan.chunks[index] in have:
                        seed.seek(have[plan.chunks[index]])
                        chunk = seed.read(min(cs, plan.length - index * cs))
                        if hashlib.sha256(chunk).hexdigest() != plan.chunks[index]:
                            break                       # the seed changed under us: download this one
                        out.write(chunk)
                        offset += len(chunk)
                        index += 1
                        self.bytes_reused += len(chunk)
                        if self.progress:
                            self.progress(offset, plan.length)
                out.flush()
            if offset == plan.length:
                os.fsync(out.fileno())
                return offset
            j = index
            while j < n and plan.chunks[j] not in have:
                j += 1
            end = min(j * cs, plan.length)
            ranged = offset > 0 or end < plan.length
            last = "" if end == plan.length else str(end - 1)
            resp = self._get(url, {"Range": f"bytes={offset}-{last}"} if ranged else None)
            try:
                if ranged and resp.status != 206:      # the server ignored the range: take the body from byte 0
                    offset, index, end = 0, 0, plan.length
                    out.truncate(0)
                    out.seek(0)
                buf = bytearray()
                try:
                    for block in resp.stream(_READ):
                        self.bytes_received += len(block)
                        buf += block
                        while buf and offset < end:
                            size = min(cs, plan.length - index * cs)
                            if len(buf) < size:
                                break
                            chunk = bytes(buf[:size])
                            del buf[:size]
                            if hashlib.sha256(chunk).hexdigest() != plan.chunks[index]:
                                raise ChunkMismatch(f"{url}: chunk {index} (bytes {offset}-{offset + size - 1}) does "
                                                    "not match its signed hash; the download is refused")
                            out.write(chunk)
                            out.flush()
                            offset += size
                            index += 1
                            if self.progress:
                                self.progress(offset, plan.length)
                        if offset >= end:
                            break          # every byte asked for is here: whatever else the server sends is not read
                except urllib3.exceptions.TimeoutError as exc:
                    raise exceptions.SlowRetrievalError(f"{url}: stalled at byte {offset}") from exc
                except urllib3.exceptions.HTTPError as exc:
                    raise exceptions.DownloadError(f"{url}: connection lost at byte {offset}: {exc}") from exc
            finally:
                resp.release_conn()
                os.fsync(out.fileno())
        if offset < end:
            raise exceptions.DownloadError(f"{url}: the connection closed at byte {offset} of {plan.length}")
        return offset
