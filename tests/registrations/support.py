"""The daemon's gRPC services (Personalizer + Registrations) around a broker ``Env``, on a real mTLS port.

Like ``tests.personalizer.test_rules_audit.Server`` but with the Registrations service, the daemon's own
server options (message size cap) and its decode interceptor, and the identities a deferred issuance
involves: the deployment's station and IR, a station and an IR of another chamber (MI).
"""
from __future__ import annotations

import grpc

from personalizer import config

from personalizer.edge import identity
from personalizer.edge.registration_service import RegistrationsService
from personalizer.server import server_options
from personalizer.edge.service import PersonalizerService
from personalizer.edge.tls_clients import ClientTrust
from proto.cns.v1 import common_pb2, personalizer_pb2_grpc as pb_grpc, registrations_pb2 as rpb
from proto.cns.v1 import registrations_pb2_grpc as rpb_grpc
from proto.wire import DecodeInterceptor
from tests.personalizer import helpers

T = 10
IR_URI = "urn:cns:ir:RM:ir-001"
STATION_URI = "urn:cns:station:RM:RM-STATION-01"
PDF = b"%PDF-1.7\n% signed request form\n" + b"0" * 2000 + b"\n%%EOF\n"
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
JPEG = b"\xff\xd8\xff\xe0" + b"\0" * 100


def holder(cf: str = helpers.CF, given: str = "Mario", surname: str = "Rossi", birth: str = "1980-01-01"):
    return common_pb2.Holder(codice_fiscale=cf, given_name=given, surname=surname, birth_date=birth)


def register_request(form: bytes = PDF, sex: str = "M", birth_town: str = "H501", **kw) -> rpb.RegisterHolderRequest:
    return rpb.RegisterHolderRequest(holder=holder(**kw), form=form, sex=sex, birth_town=birth_town)


def _cert(directory) -> helpers.ClientCert:
    return helpers.ClientCert((directory / "client.pem").read_bytes(), (directory / "client.key.pem").read_bytes())


class Server:
    def __init__(self, env, deployment):
        self.env, self.deployment = env, deployment

    async def __aenter__(self):
        s = config.load(self.deployment.server_config).server
        trust = ClientTrust(s.client_trust_anchors.read_bytes(), s.client_crl)
        self.server = grpc.aio.server(interceptors=[DecodeInterceptor(), identity.AuthInterceptor(trust=trust)],
                                      options=server_options(s))
        pb_grpc.add_PersonalizerServicer_to_server(PersonalizerService(broker=self.env.broker, relay=self.env.relay),
                                                   self.server)
        rpb_grpc.add_RegistrationsServicer_to_server(RegistrationsService(broker=self.env.broker), self.server)
        creds = grpc.ssl_server_credentials([(s.tls_key.read_bytes(), s.tls_cert.read_bytes())],
                                            root_certificates=s.client_trust_anchors.read_bytes(),
                                            require_client_auth=True)
        port = self.server.add_secure_port("127.0.0.1:0", creds)
        await self.server.start()
        tls = self.deployment.root / "tls"
        self.channels = {}
        for who, cc in (("station", _cert(self.deployment.station_config.parent)),
                        ("ir", _cert(self.deployment.ir_config.parent)),
                        ("admin", _cert(self.deployment.admin_config.parent)),
                        ("mi-station", helpers.client_cert(tls, common_name="MI-STATION-01",
                                                           identity="urn:cns:station:MI:MI-STATION-01")),
                        ("mi-ir", helpers.client_cert(tls, common_name="ir-mi", identity="urn:cns:ir:MI:ir-mi"))):
            creds = grpc.ssl_channel_credentials(root_certificates=(tls / "tls-ca.pem").read_bytes(),
                                                 private_key=cc.key, certificate_chain=cc.cert)
            self.channels[who] = grpc.aio.secure_channel(f"localhost:{port}", creds,
                                                         options=[("grpc.max_send_message_length", 32 << 20)])
        return self

    def personalizer(self, who: str):
        return pb_grpc.PersonalizerStub(self.channels[who])

    def registrations(self, who: str):
        return rpb_grpc.RegistrationsStub(self.channels[who])

    async def __aexit__(self, *exc):
        for ch in self.channels.values():
            await ch.close()
        await self.server.stop(0)
