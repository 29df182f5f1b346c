"""The daemon's TLS records are at most ``TSI_MAX_FRAME_BYTES`` (``grpc.tsi.max_frame_size`` in
``server_options``): each connection's frame protector holds a buffer of that size, so 20,000 fleet streams fit in
2 GiB (issue 15 item 6). grpc ignores a misspelled channel argument silently, so this test reads the record
lengths off the wire (a TCP relay between client and server) for a response of ~10 KiB, and checks the same
server without the argument writes a larger record (the test can fail)."""
from __future__ import annotations

import asyncio
import socket
import struct
import threading

import grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from personalizer.config import ServerConfig
from personalizer.edge.fleet_wiring import SERVICE_NAMES
from personalizer.server import TSI_MAX_FRAME_BYTES, server_options
from tests.fleet import support
from tests.fleet.test_stream import run


class Relay:
    """127.0.0.1:port → target, keeping a copy of every byte the server sent."""

    def __init__(self, target_port: int):
        self.target = target_port
        self.down = bytearray()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        client, _ = self.sock.accept()
        server = socket.create_connection(("127.0.0.1", self.target))
        threading.Thread(target=self._pump, args=(client, server, None), daemon=True).start()
        self._pump(server, client, self.down)

    @staticmethod
    def _pump(src, dst, keep):
        try:
            while data := src.recv(65536):
                if keep is not None:
                    keep += data
                dst.sendall(data)
        except OSError:   # either side closed first (teardown): nothing left to relay
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def record_lengths(self) -> list[int]:
        """Lengths of the TLS application-data records the server wrote (type 23)."""
        out, b, i = [], bytes(self.down), 0
        while i + 5 <= len(b):
            kind, _version, n = struct.unpack("!BHH", b[i:i + 5])
            if kind == 23:
                out.append(n)
            i += 5 + n
        return out


async def _largest_record(deployment, options) -> tuple[int, int]:
    tls = deployment.root / "tls"
    server = grpc.aio.server(options=options)
    reflection.enable_server_reflection(SERVICE_NAMES + (reflection.SERVICE_NAME,), server)
    creds = grpc.ssl_server_credentials([((tls / "server.key.pem").read_bytes(), (tls / "server.pem").read_bytes())],
                                        root_certificates=(tls / "tls-ca.pem").read_bytes(), require_client_auth=True)
    port = server.add_secure_port("127.0.0.1:0", creds)
    await server.start()
    relay = Relay(port)
    ch = support.aio_channel(deployment, relay.port, support.admin_cert(deployment))
    try:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        call = stub.ServerReflectionInfo()
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE_NAMES[0]))
        got = await call.read()
        size = sum(len(f) for f in got.file_descriptor_response.file_descriptor_proto)
        await call.done_writing()
    finally:
        await ch.close()
        await server.stop(0)
    await asyncio.sleep(0.2)
    return max(relay.record_lengths()), size


def test_the_daemon_writes_tls_records_of_at_most_4_kib(deployment):
    s = ServerConfig(listen="127.0.0.1:0", tls_cert=None, tls_key=None, client_trust_anchors=None)
    ours = server_options(s)
    assert ("grpc.tsi.max_frame_size", TSI_MAX_FRAME_BYTES) in ours
    largest, size = run(_largest_record(deployment, ours))
    assert size > 1.5 * TSI_MAX_FRAME_BYTES   # a response that fills a larger record in one write
    assert largest <= TSI_MAX_FRAME_BYTES, largest
    without = [o for o in ours if o[0] != "grpc.tsi.max_frame_size"]
    largest_default, _ = run(_largest_record(deployment, without))
    assert largest_default > TSI_MAX_FRAME_BYTES, largest_default   # grpc's default: the test can fail
