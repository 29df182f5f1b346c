"""Fleet test parts: an in-process grpc.aio server with the daemon's interceptors and real mTLS, station
configurations (their own certificates from the deployment's TLS CA), a fake inventory and executor
(named fakes: they stand for the agent's device layer, which the fleet tests do not exercise), tinyproxy."""
from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

import station_config
from agent.fleet import DeviceInfo, Outcome
from personalizer.edge.identity import AuthInterceptor, identity_uri
from personalizer.edge.tls_clients import ClientTrust
from personalizer.edge import fleet_wiring as wiring
from proto.wire import DecodeInterceptor
from tests.personalizer import helpers

STATION_TOML = """\
[station]
id = "{sid}"
chamber_code = "{chamber}"
role = "station"
data_dir = "agent-data"

[personalizer]
primary = "localhost:{port}"
trust_anchors = "{tls}/tls-ca.pem"
client_certificate = "client.pem"
client_key = "client.key.pem"
timeout_seconds = 10
keepalive_seconds = 20
"""


def station(deployment, where: Path, port: int, *, sid: str = "RM-ST-1", chamber: str = "RM",
            identity: str | None = None, proxy: str | None = None) -> station_config.StationConfig:
    """A station configuration with its own client certificate (``identity`` overrides the URI)."""
    where.mkdir(parents=True, exist_ok=True)
    cc = helpers.client_cert(deployment.root / "tls", common_name=sid,
                             identity=identity or identity_uri("station", sid, chamber))
    (where / "client.pem").write_bytes(cc.cert)
    (where / "client.key.pem").write_bytes(cc.key)
    (where / "client.key.pem").chmod(0o600)
    text = STATION_TOML.format(sid=sid, chamber=chamber, port=port, tls=deployment.root / "tls")
    if proxy:
        text += f'\n[proxy]\nurl = "{proxy}"\n'
    (where / "station.toml").write_text(text)
    return station_config.load(where / "station.toml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.asynccontextmanager
async def fleet_server(deployment, database: Path, *, port: int = 0, **service_options):
    """The fleet services behind the daemon's interceptors (decode, mTLS identity with the client CRL)."""
    tls = deployment.root / "tls"
    anchors = (tls / "tls-ca.pem").read_bytes()
    server = grpc.aio.server(interceptors=[DecodeInterceptor(),
                                           AuthInterceptor(trust=ClientTrust(anchors, tls / "client-crl.pem"))],
                             options=[("grpc.so_reuseport", 0)])
    fleet = await wiring.attach(server, database, **service_options)
    creds = grpc.ssl_server_credentials([((tls / "server.key.pem").read_bytes(), (tls / "server.pem").read_bytes())],
                                        root_certificates=anchors, require_client_auth=True)
    bound = server.add_secure_port(f"127.0.0.1:{port}", creds)
    await server.start()
    try:
        yield bound, fleet
    finally:
        await server.stop(0)
        await fleet.close()


def aio_channel(deployment, port: int, cc: helpers.ClientCert) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=(deployment.root / "tls" / "tls-ca.pem").read_bytes(),
                                         private_key=cc.key, certificate_chain=cc.cert)
    return grpc.aio.secure_channel(f"localhost:{port}", creds)


def admin_cert(deployment) -> helpers.ClientCert:
    d = deployment.admin_config.parent
    return helpers.ClientCert((d / "client.pem").read_bytes(), (d / "client.key.pem").read_bytes())


def cert_of(cfg: station_config.StationConfig) -> helpers.ClientCert:
    p = cfg.personalizer
    return helpers.ClientCert(p.client_certificate.read_bytes(), p.client_key.read_bytes())


class FakeInventory:
    """Stands for the agent's device registry: what the hello reports."""

    def __init__(self, readers=("Virtual PCD 00 00",), devices=()):
        self.readers = list(readers)
        self.devices = list(devices) or [DeviceInfo(serial="7420000000000001", model="infocamere-cns-2048",
                                                    firmware_version="1.0", reader=self.readers[0],
                                                    certificates=(("cns-auth", int(time.time()) + 20 * 86400),))]

    async def snapshot(self):
        return self.readers, self.devices


@dataclass
class FakeExecutor:
    """Stands for the agent's operations: records what it ran, reports progress, then succeeds."""
    refuse: set = field(default_factory=set)    # command kinds it refuses
    ran: list = field(default_factory=list)
    gate: asyncio.Event | None = None           # when set, run() waits for it

    def accept(self, command):
        return "this agent does not do that" if command.kind in self.refuse else None

    async def run(self, command, progress):
        self.ran.append(command.command_id)
        await progress(50, "half way")
        if self.gate is not None:
            await self.gate.wait()
        return Outcome(True, "done")


async def until(predicate, timeout: float = 10.0, what: str = "condition"):
    """Await ``predicate()`` (sync or async) becoming true."""
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if asyncio.iscoroutine(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@dataclass
class Tinyproxy:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connects(self) -> int:
        return self.log.read_text(errors="replace").count("CONNECT")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_tinyproxy(where: Path, *, idle_timeout: int = 600) -> Tinyproxy:
    """Debian's tinyproxy in the foreground on a free port: CONNECT to any port, ``Timeout`` = idle timeout."""
    exe = shutil.which("tinyproxy") or "/usr/bin/tinyproxy"
    port = free_port()
    log = where / "tinyproxy.log"
    conf = where / "tinyproxy.conf"
    conf.write_text(f'Port {port}\nListen 127.0.0.1\nTimeout {idle_timeout}\nLogFile "{log}"\nLogLevel Info\n'
                    f'MaxClients 100\nAllow 127.0.0.1\n')
    proc = subprocess.Popen([exe, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return Tinyproxy(proc, port, log)
        if proc.poll() is not None:
            raise RuntimeError(f"tinyproxy exited: {proc.stderr.read().decode()}")
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("tinyproxy did not listen")


class ModelCA:
    """A TEST attestation CA for one device model, issuing each emulated device's key (the emulator's
    device key: the tests hold the private keys and sign for the device)."""

    def __init__(self, model: str):
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        self.model = model
        self._x509, self._hashes, self._ec, self._oid, self._dt = x509, hashes, ec, NameOID, dt
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"TEST attestation CA {model}")])
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                     .serial_number(x509.random_serial_number()).not_valid_before(now)
                     .not_valid_after(now + dt.timedelta(days=30))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.devices: dict[str, tuple] = {}

    def device(self, serial: str):
        """(private key, certificate DER) of the device ``serial``."""
        if serial not in self.devices:
            x509, oid = self._x509, self._oid
            key = self._ec.generate_private_key(self._ec.SECP256R1())
            now = self._dt.datetime.now(self._dt.timezone.utc)
            cert = (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(oid.SERIAL_NUMBER, serial)]))
                    .issuer_name(self.cert.subject).public_key(key.public_key())
                    .serial_number(x509.random_serial_number()).not_valid_before(now)
                    .not_valid_after(now + self._dt.timedelta(days=30)).sign(self.key, self._hashes.SHA256()))
            from cryptography.hazmat.primitives.serialization import Encoding
            self.devices[serial] = (key, cert.public_bytes(Encoding.DER))
        return self.devices[serial]


@dataclass
class TokenExecutor:
    """Stands for the agent's token update: "installs" a release on a device and relays the device's
    attestation. ``honest=False``: a host that reports success without installing (no attestation);
    ``fail=True``: the install fails; ``replay``: sends the attestation of an earlier command."""
    ca: ModelCA
    honest: bool = True
    fail: bool = False
    replay: bool = False
    ran: list = field(default_factory=list)
    _last: bytes = b""

    def accept(self, command):
        return None

    async def run(self, command, progress):
        from agent.fleet.attest import attestation
        from cryptography.hazmat.primitives import hashes
        self.ran.append(command.command_id)
        if self.fail:
            return Outcome(False, "flash verify failed")
        if not self.honest:
            return Outcome(True, "installed (not really)")
        if self.replay and self._last:
            return Outcome(True, "installed", self._last)
        key, cert = self.ca.device(command.device_serial)
        att = attestation(command, serial=command.device_serial, model=self.ca.model, release=command.release,
                          sign=lambda m: key.sign(m, self._ec.ECDSA(hashes.SHA256())), device_certificate=cert)
        self._last = att
        return Outcome(True, "installed", att)

    @property
    def _ec(self):
        from cryptography.hazmat.primitives.asymmetric import ec
        return ec
