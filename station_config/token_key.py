"""The station key in a PKCS#11 token (``[enrollment]`` of the station configuration, issue 18 item 4).

The private key is made in the token as sensitive and non-extractable and never leaves it: the token
signs the CSR (``cns-agent enroll``, station-certificate renewal) and every TLS handshake of the agent's
gRPC channels. grpcio takes PEM keys only in ``grpc.ssl_channel_credentials``; its (experimental, in the
grpcio >= 1.85 this project requires) ``grpc.experimental.ssl_channel_credentials_with_custom_signer`` hands BoringSSL's private-key
operation (the handshake's CertificateVerify input, unhashed, and the signature algorithm) to a Python
function: ``TokenKey.tls_signer`` is that function.

Keys are EC P-256 (ECDSA with SHA-256, hashed here, ``CKM_ECDSA`` in the token: SoftHSM2 and most
smart-card tokens have it, not all have ``CKM_ECDSA_SHA256``). Each key pair is labelled ``KEY_LABEL``
and its ``CKA_ID`` is the SHA-256 of its SubjectPublicKeyInfo (first 20 bytes), so the key of a
certificate is found from the certificate alone: a renewal makes a new pair beside the old one,
switches the certificate file, then deletes the pairs no certificate uses (``prune``).

``open_token(module, token_label, pin_file)`` gives one shared ``TokenKey`` per token in a process
(PKCS#11 is initialised once per process; the login is the application's); a session the token lost
(pulled and put back) is replaced by a new login once, so the agent keeps working without a restart. The PIN is read from
``pin_file`` when the token is opened and kept by the PKCS#11 library only; it never reaches a message.
Errors are ``TokenKeyError`` with one line saying what to do. Imports python-pkcs11, asn1crypto (through
python-pkcs11's EC helpers) and the standard library; nothing of ours.
"""
from __future__ import annotations

import functools
import hashlib
import os
import stat
import threading
from pathlib import Path

KEY_LABEL = "cns-station"
MAX_PIN = 256


class TokenKeyError(OSError):
    """The token cannot be used (missing library or token, wrong PIN, no key); one line for the operator.
    An ``OSError`` (a device that failed) so that the callers that build channels report it as they
    report an unreadable key file."""


def key_id(spki_der: bytes) -> bytes:
    return hashlib.sha256(spki_der).digest()[:20]


def read_pin(pin_file: Path) -> str:
    try:
        st = pin_file.stat()
        if stat.S_IMODE(st.st_mode) & 0o077:
            raise TokenKeyError(f"{pin_file}: the token PIN file is readable by others (mode "
                                f"{stat.S_IMODE(st.st_mode):o}); run `chmod 600 {pin_file}`")
        raw = pin_file.read_bytes()[:MAX_PIN + 1]
    except OSError as exc:
        raise TokenKeyError(f"cannot read the token PIN file {pin_file}: {exc.strerror or exc}") from None
    pin = raw.decode("utf-8", "replace").strip()
    if not pin or len(pin) > MAX_PIN or "\n" in pin:
        raise TokenKeyError(f"{pin_file}: expected the token's user PIN on one line")
    return pin


class TokenKey:
    """One logged-in session on the token; every call holds its lock (gRPC signs from its own threads)."""

    def __init__(self, module: Path, token_label: str, pin_file: Path) -> None:
        import pkcs11
        from pkcs11 import exceptions as px

        self.module, self.token_label, self.pin_file = module, token_label, pin_file
        self._lock = threading.Lock()
        try:
            self._lib = pkcs11.lib(str(module))
        except (RuntimeError, OSError, px.PKCS11Error) as exc:
            raise TokenKeyError(f"cannot load the PKCS#11 library {module} ({exc}); check "
                                "enrollment.pkcs11_module") from None
        self._session = self._login()

    def _login(self):
        """A new logged-in session (at start, and once more after the token was pulled and put back)."""
        from pkcs11 import exceptions as px

        label = self.token_label
        try:
            token = self._lib.get_token(token_label=label)
        except px.NoSuchToken:
            raise TokenKeyError(f"no PKCS#11 token labelled {label!r} in {self.module}: insert it, or check "
                                "enrollment.token_label") from None
        except px.MultipleTokensReturned:
            raise TokenKeyError(f"more than one token is labelled {label!r}: leave one inserted") from None
        pin = read_pin(self.pin_file)
        try:
            return token.open(user_pin=pin, rw=True)
        except px.PinIncorrect:
            raise TokenKeyError(f"the token {label!r} refused the PIN in {self.pin_file}: put its user PIN "
                                "there (the token counts wrong PINs and locks)") from None
        except px.PinLocked:
            raise TokenKeyError(f"the token {label!r} has its user PIN locked: unlock it with its SO PIN "
                                "first") from None
        except px.PKCS11Error as exc:
            raise TokenKeyError(f"cannot log in to the token {label!r}: {type(exc).__name__}") from None
        finally:
            del pin

    def _again(self, work):
        """``work(session)``; when the session is gone (token pulled and put back, the library reset), once more
        on a new one. Called with the lock held."""
        from pkcs11 import exceptions as px

        try:
            return work(self._session)
        except (px.SessionHandleInvalid, px.SessionClosed, px.DeviceRemoved, px.TokenNotPresent,
                px.UserNotLoggedIn):
            self._session = self._login()
            return work(self._session)

    # -- keys --------------------------------------------------------------------------------
    def generate(self) -> bytes:
        """A new EC P-256 key pair in the token; the SubjectPublicKeyInfo (DER) of its public key."""
        from pkcs11 import Attribute, KeyType
        from pkcs11 import exceptions as px
        from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

        def make(session) -> bytes:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
            pub, priv = params.generate_keypair(
                store=True, label=KEY_LABEL, id=os.urandom(20),
                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False,
                                  Attribute.SIGN: True, Attribute.PRIVATE: True})
            spki = encode_ec_public_key(pub)
            for obj in (pub, priv):                       # the id that finds it from its certificate
                obj[Attribute.ID] = key_id(spki)
            return spki
        with self._lock:
            try:
                spki = self._again(make)
            except TokenKeyError:
                raise
            except px.PKCS11Error as exc:
                raise TokenKeyError(f"the token {self.token_label!r} could not make an EC P-256 key "
                                    f"({type(exc).__name__}): is it full, or read-only?") from None
        return spki

    def _private(self, session, spki_der: bytes):
        from pkcs11 import KeyType, ObjectClass
        from pkcs11 import exceptions as px

        try:
            return session.get_key(object_class=ObjectClass.PRIVATE_KEY, key_type=KeyType.EC,
                                         id=key_id(spki_der))
        except px.NoSuchKey:
            raise TokenKeyError(f"the token {self.token_label!r} holds no key for this station's certificate: "
                                "enroll this station again (`cns-agent enroll`)") from None

    def sign(self, spki_der: bytes, data: bytes) -> bytes:
        """ECDSA-SHA256 over ``data`` by the key of ``spki_der``; DER (Ecdsa-Sig-Value), as X.509 and TLS want."""
        from pkcs11 import Mechanism
        from pkcs11 import exceptions as px
        from pkcs11.util.ec import encode_ecdsa_signature

        digest = hashlib.sha256(data).digest()
        with self._lock:
            try:
                raw = self._again(lambda s: self._private(s, spki_der).sign(digest, mechanism=Mechanism.ECDSA))
            except TokenKeyError:
                raise
            except px.PKCS11Error as exc:
                raise TokenKeyError(f"the token {self.token_label!r} did not sign ({type(exc).__name__}): is it "
                                    "still inserted?") from None
        return encode_ecdsa_signature(raw)

    def is_protected(self, spki_der: bytes) -> bool:
        """The private key is sensitive and was never extractable (what the token itself reports)."""
        from pkcs11 import Attribute

        with self._lock:
            key = self._again(lambda s: self._private(s, spki_der))
            return bool(key[Attribute.SENSITIVE]) and not key[Attribute.EXTRACTABLE] \
                and bool(key[Attribute.NEVER_EXTRACTABLE])

    def prune(self, keep_spki_der: bytes) -> int:
        """Delete this station's other key pairs (an old certificate's, a renewal that never finished)."""
        from pkcs11 import Attribute

        keep = key_id(keep_spki_der)

        def drop(session) -> int:
            n = 0
            for obj in list(session.get_objects({Attribute.LABEL: KEY_LABEL})):
                if obj[Attribute.ID] != keep:
                    obj.destroy()
                    n += 1
            return n
        with self._lock:
            return self._again(drop)

    def tls_signer(self, spki_der: bytes):
        """The ``private_key_sign_fn`` of ``grpc.experimental.ssl_channel_credentials_with_custom_signer``."""
        from grpc.experimental import PrivateKeySignatureAlgorithm as Alg

        def sign(data: bytes, algorithm, on_complete):
            if algorithm != Alg.ECDSA_SECP256R1_SHA256:   # the only one a P-256 key offers in TLS 1.2/1.3
                raise TokenKeyError(f"TLS asked for {algorithm!r}; the station key signs ECDSA P-256 SHA-256 only")
            return self.sign(spki_der, data)
        return sign


@functools.lru_cache(maxsize=None)
def _open(module: Path, token_label: str, pin_file: Path) -> TokenKey:
    return TokenKey(module, token_label, pin_file)


def open_token(module: Path, token_label: str, pin_file: Path) -> TokenKey:
    """The process's ``TokenKey`` for this token (opened and logged in on first use)."""
    return _open(Path(module), token_label, Path(pin_file))
