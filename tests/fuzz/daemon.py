"""A personalizer daemon subprocess for the fuzz (real mTLS on loopback, a fresh test deployment) whose
stderr goes to a file, so its log can be read while it runs (a pipe could fill up and stall it), with
its RSS. Used by tests/fuzz/conftest.py and ``scripts/bench fuzz``."""
from __future__ import annotations

import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import grpc

from personalizer import deploy
from tests.personalizer import helpers


@dataclass
class FuzzDaemon:
    proc: subprocess.Popen
    port: int
    log_path: Path
    deployment: object

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def channel(self, which: str) -> grpc.aio.Channel:
        """An aio mTLS channel as the deployment's ``station`` or ``admin`` client."""
        d = (self.deployment.station_config if which == "station" else self.deployment.admin_config).parent
        creds = grpc.ssl_channel_credentials(
            root_certificates=(self.deployment.root / "tls" / "tls-ca.pem").read_bytes(),
            private_key=(d / "client.key.pem").read_bytes(), certificate_chain=(d / "client.pem").read_bytes())
        return grpc.aio.secure_channel(f"localhost:{self.port}", creds)


def start_daemon(root: Path, *, log_level: str = "INFO") -> FuzzDaemon:
    dep = deploy.init_deployment(root / "cns", chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")
    log_path = root / "daemon.log"
    with open(log_path, "w") as err:
        proc = subprocess.Popen(
            [str(helpers.VENV_BIN / "cns-personalizer"), "--log-level", log_level, "serve",
             "--config", str(dep.server_config)], stdout=subprocess.PIPE, stderr=err, text=True)
    line = proc.stdout.readline()
    m = helpers.DaemonProcess.LISTEN_RE.search(line)
    if not m:
        proc.kill()
        raise RuntimeError(f"daemon did not start: {line!r} {log_path.read_text()}")
    return FuzzDaemon(proc, int(m.group(1)), log_path, dep)


def stop_daemon(d: FuzzDaemon, timeout: float = 15) -> int:
    d.proc.send_signal(signal.SIGTERM)
    try:
        return d.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        d.proc.kill()
        raise
