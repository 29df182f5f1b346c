"""The embedded CA's signing threads ([server] workers): signatures leave the event loop, records stay exact.

cryptography releases the GIL while it signs, so a signature on a ``ca-sign``
thread runs beside the event loop. These tests pin what that must not change:
the event loop never signs when workers >= 1 (and does with workers = 0),
concurrent calls for one request id still get one certificate and one
``ca.db`` row, and the configuration key is bounded with a clear message.
"""
from __future__ import annotations

import asyncio
import sqlite3
import threading

import pytest
from cryptography import x509

from personalizer import config
from personalizer.ca.base import ref_of
from personalizer.ca.embedded import EmbeddedCA
from personalizer.ca.index import DB_NAME
from personalizer.ca.keys import FileSigner
from personalizer.ca.signing import SigningPool, default_workers
from personalizer.errors import ConfigError
from tests.ca import support


class RecordingSigner(FileSigner):
    """The real file signer, noting which thread signed each certificate."""

    def __init__(self, key):
        super().__init__(key)
        self.threads: list[str] = []

    def sign_certificate(self, builder):
        self.threads.append(threading.current_thread().name)
        return super().sign_certificate(builder)


def _ca(directory, workers: int) -> tuple[EmbeddedCA, RecordingSigner]:
    signer = RecordingSigner(FileSigner.load(directory / "issuing.key.pem", directory / "passphrase")._key)
    ca = EmbeddedCA(signer=signer, issuing_cert=x509.load_pem_x509_certificate((directory / "issuing.pem").read_bytes()),
                    root_cert=x509.load_pem_x509_certificate((directory / "root.pem").read_bytes()),
                    ca_dir=directory, signing_workers=workers)
    return ca, signer


async def _issue_many(ca, ids):
    await ca.open()                       # may sign the OCSP responder's certificate: not counted below
    ca._signer.threads.clear()
    try:
        return await asyncio.gather(*(ca.issue("cns-auth", support.csr(), support.SUBJECT, rid) for rid in ids))
    finally:
        await ca.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_signatures_run_on_the_signing_threads_not_the_event_loop(tmp_path, workers):
    ca, signer = _ca(support.ca_dir(tmp_path), workers)
    issued = asyncio.run(_issue_many(ca, [f"req-{i}" for i in range(6)]))
    assert len({c.ref.serial_hex for c in issued}) == 6
    assert all(c.ref == ref_of(x509.load_der_x509_certificate(c.certificate_der)) for c in issued)
    assert len(signer.threads) == 6 and all(t.startswith("ca-sign") for t in signer.threads), signer.threads


def test_zero_workers_signs_inline_on_the_event_loop(tmp_path):
    ca, signer = _ca(support.ca_dir(tmp_path), 0)
    asyncio.run(_issue_many(ca, ["req-1", "req-2"]))
    assert signer.threads == ["MainThread", "MainThread"]


def test_one_request_id_gets_one_certificate_under_parallel_signing(tmp_path):
    directory = support.ca_dir(tmp_path)
    ca, signer = _ca(directory, 2)
    issued = asyncio.run(_issue_many(ca, ["same"] * 8 + ["other"] * 8))
    assert len({c.ref.serial_hex for c in issued[:8]}) == 1 and len({c.ref.serial_hex for c in issued[8:]}) == 1
    assert len(signer.threads) == 2                               # signed once per request id, not 16 times
    db = sqlite3.connect(directory / DB_NAME)
    try:
        assert db.execute("SELECT request_id, COUNT(*) FROM certificates GROUP BY request_id ORDER BY 1").fetchall() \
            == [("other", 1), ("same", 1)]
    finally:
        db.close()


def test_signing_pool_refuses_negative_workers():
    with pytest.raises(ValueError):
        SigningPool(-1)


def _with_workers(deployment, tmp_path, line: str):
    text = deployment.server_config.read_text().replace("[server]\n", f"[server]\n{line}\n", 1)
    p = deployment.server_config.with_name(f"workers-{tmp_path.name}.toml")
    p.write_text(text)
    return p


def test_workers_defaults_to_the_number_of_cores_and_reaches_the_ca(tmp_path):
    from personalizer import deploy
    from personalizer.server import build_ca

    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0")
    # with one server process the CA signs in one thread per core; by default (issue 16) there is a
    # process per core, and each signs on its own event loop
    assert config.load(_with_workers(dep, tmp_path, "processes = 1")).server.workers == default_workers() >= 1
    cfg = config.load(dep.server_config)
    assert cfg.server.workers == (0 if cfg.server.processes > 1 else default_workers())
    assert config.load(_with_workers(dep, tmp_path, "workers = 0")).server.workers == 0
    ca = build_ca(config.load(_with_workers(dep, tmp_path, "workers = 3")))
    try:
        assert ca._signing.workers == 3
    finally:
        asyncio.run(ca.close())


@pytest.mark.parametrize("line", ["workers = 65", "workers = -1", 'workers = "all"'])
def test_workers_out_of_range_is_a_config_error_naming_the_key(tmp_path, line):
    from personalizer import deploy

    dep = deploy.init_deployment(tmp_path / "d", listen="127.0.0.1:0")
    with pytest.raises(ConfigError) as ei:
        config.load(_with_workers(dep, tmp_path, line))
    assert ei.value.key == "server.workers"
