"""A private pcscd with the vsmartcard vpcd driver, for tests, demos and hardware testers.

pcscd's socket path is fixed at build time (/run/pcscd/pcscd.comm), so two
instances cannot normally share a host. pcscd also accepts its listening socket
from systemd socket activation (LISTEN_FDS/LISTEN_PID), and libpcsclite clients
honour ``PCSCLITE_CSOCK_NAME``. We create the socket ourselves in a temporary
folder, hand it to pcscd as fd 3, and give clients the path in their
environment. Each instance gets its own reader.conf.d with a free vpcd port
pair, so parallel test runs never see each other's cards.

The client library reads ``PCSCLITE_CSOCK_NAME`` once per process, so the
pytest process itself can talk to one instance only: the session fixture sets it
before anything loads pyscard. Subprocesses (agent, OpenSC tools) get ``env``.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

VPCD_DRIVER = Path("/usr/lib/pcsc/drivers/serial/libifdvpcd.so")


def _port_pair_free(port: int) -> bool:
    for p in (port, port + 1):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("0.0.0.0", p))
        except OSError:
            return False
        finally:
            s.close()
    return True


def free_port_pair(start: int = 20000, end: int = 26000) -> int:
    """An even port whose pair is free, below the kernel's ephemeral range (32768-60999 on Debian) and the
    PostgreSQL cluster's ports (26000 and up, personalizer.continuity.cluster): the
    outgoing connections of whatever else runs here (a fleet benchmark holds 20,000) never take it."""
    import random

    for _ in range(200):
        port = random.randrange(start, end, 2)
        if _port_pair_free(port):
            return port
    raise RuntimeError("no free TCP port pair for vpcd")


def missing_tools() -> list[str]:
    missing = []
    if not shutil.which("pcscd"):
        missing.append("pcscd (apt-get install pcscd)")
    if not VPCD_DRIVER.exists():
        missing.append("vpcd driver (apt-get install vsmartcard-vpcd)")
    return missing


@dataclass
class Pcscd:
    """A running private pcscd. ``port`` is the vpcd port of reader 0; reader 1 is port+1."""

    workdir: Path
    port: int
    socket_path: Path
    proc: subprocess.Popen
    log_path: Path
    _sock: socket.socket = field(repr=False)

    reader_names = ("Virtual PCD 00 00", "Virtual PCD 00 01")

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PCSCLITE_CSOCK_NAME"] = str(self.socket_path)
        return env

    def vpcd_address(self, reader: int = 0) -> str:
        return f"127.0.0.1:{self.port + reader}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._sock.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


def start_pcscd(workdir: Path, *, debug: bool = False) -> Pcscd:
    workdir.mkdir(parents=True, exist_ok=True)
    os.chmod(workdir, 0o755)
    port = free_port_pair()
    conf = workdir / "reader.conf.d"
    conf.mkdir(exist_ok=True)
    (conf / "vpcd").write_text(
        'FRIENDLYNAME "Virtual PCD"\n'
        f"DEVICENAME   /dev/null:0x{port:04X}\n"
        f"LIBPATH      {VPCD_DRIVER}\n"
        f"CHANNELID    0x{port:04X}\n"
    )
    sock_path = workdir / "pcscd.comm"
    if sock_path.exists():
        sock_path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(sock_path))
    sock.listen(64)
    os.chmod(sock_path, 0o777)  # as Debian 12's pcscd: any local user may use it
    fd = sock.fileno()
    log_path = workdir / "pcscd.log"
    args = "pcscd --foreground --error" + (" --debug --apdu" if debug else "") + f" -c {conf}"

    def _as_fd3() -> None:
        os.dup2(fd, 3)

    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            ["sh", "-c", f"LISTEN_PID=$$ LISTEN_FDS=1 exec {args}"],
            pass_fds=(fd, 3) if fd != 3 else (3,),
            preexec_fn=_as_fd3,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    inst = Pcscd(workdir=workdir, port=port, socket_path=sock_path, proc=proc, log_path=log_path, _sock=sock)
    # Ready when vpcd listens on its port.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"pcscd exited at start: {inst.log()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            # that connection looked like a card insert+remove to vpcd; give it a moment
            time.sleep(0.2)
            return inst
        except OSError:
            time.sleep(0.05)
    inst.stop()
    raise RuntimeError(f"pcscd's vpcd did not listen on {port}: {inst.log()}")
