"""Issuance rate through gRPC + mTLS + request store + embedded CA (RSA-3072), vs raw signing.

Starts ``cns-personalizer serve`` on a fresh test deployment (its own process),
drives it from an asyncio gRPC client in this process with CONCURRENCY calls
in flight, and measures in the same run the single-thread raw RSA-3072
PKCS#1 v1.5 SHA-256 signing rate of the same CA key. Headline:
issuance_rate / raw_sign_rate (target >= 0.30) and p99 latency (< 100 ms).

Usage: scripts/bench issue [--requests N] [--concurrency C] [--synchronous FULL|NORMAL]
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from pathlib import Path

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from benchmarks._daemon import personalizer_daemon
from personalizer import codice_fiscale, dati_personali, deploy
from personalizer.ca.keys import FileSigner
from proto.cns.v1 import common_pb2, personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc
from tests.support import keys as test_keys   # distinct test keys, cheaply (shared primes: tests only)

TARGET_RATIO = 0.30
TARGET_P99_MS = 100.0
RAW_SIGN_SECONDS = 2.0
DISTINCT_HOLDERS = 32


def raw_sign_rate(signer: FileSigner, seconds: float = RAW_SIGN_SECONDS) -> float:
    data = os.urandom(512)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        signer.raw_sign(data)
        n += 1
    return n / (time.perf_counter() - start)


def _holders() -> list[tuple[str, bytes]]:
    out = []
    for i in range(DISTINCT_HOLDERS):
        cf = codice_fiscale.make(f"RSSMRA80A01H{i:03d}")
        ef = dati_personali.encode(dati_personali.DatiPersonali(
            surname="Rossi", given_name="Mario", birth_date="01011980", codice_fiscale=cf))
        out.append((cf, ef))
    return out


def _request(i: int, holder, profile) -> pb.SubmitIssueRequest:
    """One request on a key of its own: the personalizer certifies a public key once (issue 10 item 6)."""
    cf, ef = holder
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.SERIAL_NUMBER, "TINIT-" + cf)]))
           .sign(test_keys.fresh_key(), hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    return pb.SubmitIssueRequest(
        request_id=str(uuid.uuid4()), profile=profile, csr_der=csr,
        holder=common_pb2.Holder(codice_fiscale=cf, given_name="Mario", surname="Rossi", birth_date="1980-01-01"),
        card=common_pb2.Card(card_id=f"74200000{i:08d}"[:16]),
        requester=common_pb2.Requester(station_id="RM-STATION-01", chamber_code="RM", operator_id="bench"),
        ef_dati_personali=ef)


async def _drive(port: int, tls: Path, station: Path, requests: list, concurrency: int) -> tuple[float, list[float]]:
    creds = grpc.ssl_channel_credentials((tls / "tls-ca.pem").read_bytes(), (station / "client.key.pem").read_bytes(),
                                         (station / "client.pem").read_bytes())
    latencies: list[float] = []
    async with grpc.aio.secure_channel(f"localhost:{port}", creds) as ch:
        stub = pb_grpc.PersonalizerStub(ch)
        await stub.GetCAStatus(pb.GetCAStatusRequest(), timeout=30)
        queue = list(reversed(requests))

        async def worker():
            while queue:
                req = queue.pop()
                t0 = time.perf_counter()
                resp = await stub.SubmitIssue(req, timeout=30)
                latencies.append(time.perf_counter() - t0)
                assert resp.state == pb.REQUEST_STATE_ISSUED

        start = time.perf_counter()
        await asyncio.gather(*(asyncio.create_task(worker(), name=f"bench-client-{i}") for i in range(concurrency)))
        return time.perf_counter() - start, latencies


def _percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench issue", description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    opts = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-issue-") as tmp:
        dep = deploy.init_deployment(Path(tmp) / "d", listen="127.0.0.1:0")
        cfg = dep.server_config
        cfg.write_text(cfg.read_text().replace('synchronous = "FULL"', f'synchronous = "{opts.synchronous}"'))
        signer = FileSigner.load(dep.root / "ca" / "issuing.key.pem", dep.root / "ca" / "passphrase")
        key_bits = signer.public_key().key_size
        raw = raw_sign_rate(signer)
        with personalizer_daemon(cfg) as port:
            holders = _holders()
            profiles = (pb.CA_PROFILE_CNS_AUTH, pb.CA_PROFILE_QUALIFIED_SIGNATURE)
            reqs = [_request(i, holders[i % len(holders)], profiles[i % 2]) for i in range(opts.warmup + opts.requests)]
            station = dep.station_config.parent
            asyncio.run(_drive(port, dep.root / "tls", station, reqs[:opts.warmup], opts.concurrency))
            elapsed, lat = asyncio.run(_drive(port, dep.root / "tls", station, reqs[opts.warmup:], opts.concurrency))
        rate = opts.requests / elapsed
        p50, p99 = _percentile(lat, 0.50) * 1000, _percentile(lat, 0.99) * 1000
        ratio = rate / raw
        return {
            "ok": True,
            "issuance_rate": round(rate, 1), "issuance_rate_unit": "certificates/s",
            "p50_latency_ms": round(p50, 2), "p99_latency_ms": round(p99, 2),
            "raw_sign_rate": round(raw, 1), "raw_sign_rate_unit": f"RSA-{key_bits} signatures/s, one thread (reference)",
            "ratio": round(ratio, 3), "target_ratio": TARGET_RATIO, "target_p99_ms": TARGET_P99_MS,
            "meets_target": ratio >= TARGET_RATIO and p99 < TARGET_P99_MS,
            "requests": opts.requests, "concurrency": opts.concurrency, "synchronous": opts.synchronous,
            "cpus": os.cpu_count(),
        }
