"""A personalizer daemon subprocess for the fuzz (real mTLS on loopback, a fresh test deployment with
``[enrollment]``, ``[card_admin]`` and the fleet on) whose stderr goes to a file, so its log can be read
while it runs (a pipe could fill up and stall it), with its RSS, its enrollment port, and a digest of
its stores (what a refused call must leave unchanged). Used by tests/fuzz/conftest.py and
``scripts/bench fuzz``."""
from __future__ import annotations

import hashlib
import re
import signal
import sqlite3
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from personalizer import deploy
from personalizer.edge.identity import ROLE_STATION, identity_uri
from tests.personalizer import helpers


@dataclass
class FuzzDaemon:
    proc: subprocess.Popen
    port: int
    log_path: Path
    deployment: object
    enroll_port: int = 0
    _extra: dict = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def _credentials(self, which: str) -> grpc.ChannelCredentials:
        root = (self.deployment.root / "tls" / "tls-ca.pem").read_bytes()
        if which == "enroll":
            return grpc.ssl_channel_credentials(root_certificates=root)
        if which.startswith("station-"):   # one more station of chamber RM (e.g. "station-3"), made on demand
            cc = self._extra.get(which)
            if cc is None:
                station_id = f"RM-FUZZ-{which.rpartition('-')[2]}"
                cc = self._extra[which] = helpers.client_cert(
                    self.deployment.root / "tls", common_name=station_id,
                    identity=identity_uri(ROLE_STATION, station_id, "RM"))
            return grpc.ssl_channel_credentials(root_certificates=root, private_key=cc.key,
                                                certificate_chain=cc.cert)
        d = {"station": self.deployment.station_config.parent, "admin": self.deployment.admin_config.parent,
             "ir": self.deployment.root / "ir"}[which]
        return grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=(d / "client.key.pem").read_bytes(), certificate_chain=(d / "client.pem").read_bytes())

    def _target(self, which: str) -> str:
        return f"localhost:{self.enroll_port if which == 'enroll' else self.port}"

    def channel(self, which: str) -> grpc.aio.Channel:
        """An aio channel as the deployment's ``station``, ``admin`` or ``ir`` client (mTLS), as one more
        station ``station-N`` (RM-FUZZ-N, a certificate of the deployment's TLS CA), or ``enroll``: the
        enrollment port, server-authenticated TLS without a client certificate (as an agent enrolling)."""
        return grpc.aio.secure_channel(self._target(which), self._credentials(which))

    def sync_channel(self, which: str) -> grpc.Channel:
        """As ``channel``, with grpc's synchronous API (see ``protofuzz.fuzz``: client streams)."""
        return grpc.secure_channel(self._target(which), self._credentials(which))

    def databases(self) -> list[Path]:
        return [self.deployment.root / "data" / "requests.sqlite"]   # the CA's tables are in it too (issue 16)

    def store_digest(self) -> dict[str, str]:
        """Table → hash of its rows, over the daemon's databases, leaving out the audit trails (a refused
        call writes its audit row), the processes' presence rows and SQLite's own bookkeeping. Read-only, beside the running daemon."""
        out = {}
        for db in self.databases():
            con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
            try:
                for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"):
                    if table in UNDIGESTED:
                        continue
                    h = hashlib.sha256()
                    for row in con.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                        h.update(repr(row).encode())
                    out[f"{db.name}:{table}"] = h.hexdigest()
            finally:
                con.close()
        return out

    def stored_bytes(self) -> bytes:
        """Every byte of the daemon's databases and their WAL files (to look for secrets in them)."""
        return b"".join(p.read_bytes() for db in self.databases()
                        for p in (db, db.with_name(db.name + "-wal")) if p.exists())


# fleet_presence: each helper process's stream count and figures, rewritten every few seconds whatever the
# calls (processes = the cores by default): runtime bookkeeping like the audit trails, not stored data
UNDIGESTED = frozenset({"audit", "fleet_audit", "sqlite_sequence", "fleet_presence"})
ENROLL_RE = re.compile(r"enrollment on port (\d+)")


def start_daemon(root: Path, *, log_level: str = "INFO", attempts_per_minute: int = 600) -> FuzzDaemon:
    """``attempts_per_minute``: the enrollment port's per-address limit (the most the config allows by
    default, so the fuzz reaches the handlers behind it)."""
    dep = deploy.init_deployment(root / "cns", chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")
    cfg = dep.server_config
    cfg.write_text(cfg.read_text().replace("code_hours = 72",
                                           f"code_hours = 72\nattempts_per_minute = {attempts_per_minute}"))
    log_path = root / "daemon.log"
    with open(log_path, "w") as err:
        proc = subprocess.Popen(
            [str(helpers.VENV_BIN / "cns-personalizer"), "--log-level", log_level, "serve",
             "--config", str(dep.server_config)], stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline()
    m = helpers.DaemonProcess.LISTEN_RE.search(line)
    enroll = ENROLL_RE.search(proc.stdout.readline()) if m else None
    if not m or not enroll:
        proc.kill()
        raise RuntimeError(f"daemon did not start: {line!r} {log_path.read_text()}")
    return FuzzDaemon(proc, int(m.group(1)), log_path, dep, int(enroll.group(1)))


def stop_daemon(d: FuzzDaemon, timeout: float = 15) -> int:
    d.proc.send_signal(signal.SIGTERM)
    try:
        return d.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        d.proc.kill()
        raise
