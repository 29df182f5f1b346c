"""The card administration master keys in a PKCS#11 token, and the cryptograms computed with them.

One AES-128 master key per card model, label ``cns-card-admin:<model id>``,
created non-extractable and sensitive (``CKA_EXTRACTABLE=false``,
``CKA_SENSITIVE=true``), usable only to derive. For a card, ``cryptogram``
derives the card's own key INSIDE the token (C_DeriveKey with
``CKM_AES_ECB_ENCRYPT_DATA`` over the model scheme's diversification block,
``firmware_profiles.admin_keys``) into a session object that is itself
sensitive and non-extractable, encrypts the card's challenge with it
(``CKM_AES_ECB``) and destroys it. No key byte ever leaves the token or
reaches this process; only the 16-byte answer to one challenge does.

``import_master`` is for TEST deployments (the emulated cards' TEST master key,
``cns-personalizer init``); production generates its master in the HSM
(``generate_master``) and loads the same key into the card factory through
the HSM vendor's key ceremony.

SoftHSM2 finds its tokens through ``SOFTHSM2_CONF``; ``softhsm2_conf`` sets it for
this process before the module is loaded. PKCS#11 sessions are not shared
between threads: calls are serialised by a lock (the daemon calls from a worker
thread). Must not import grpc, proto or the store; never logs a PIN or a key.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path

from firmware_profiles.admin_keys import diversification_block
from personalizer.errors import PersonalizerError

LABEL_PREFIX = "cns-card-admin:"
KEY_BITS = 128


class CardKeyError(PersonalizerError):
    """The token cannot answer for this card (no master key for its model, token unusable)."""

    code = "FAILED_PRECONDITION"


def master_label(model_id: str) -> str:
    return LABEL_PREFIX + model_id


class CardKeyToken:
    """The master keys' token: ``cryptogram(model_id=, scheme=, serial=, challenge=)``."""

    def __init__(self, *, module: str, token_label: str, pin: str, softhsm2_conf: Path | None = None):
        import pkcs11   # python-pkcs11

        if softhsm2_conf is not None:
            os.environ["SOFTHSM2_CONF"] = str(softhsm2_conf)
        self._lock = threading.Lock()
        try:
            self._token = pkcs11.lib(module).get_token(token_label=token_label)
            self._session = self._token.open(user_pin=pin, rw=True)
        except (pkcs11.PKCS11Error, RuntimeError, OSError) as exc:
            raise CardKeyError(f"cannot open the card administration token {token_label!r} with {module}: "
                               f"{type(exc).__name__}") from None
        self._masters: dict[str, object] = {}

    def close(self) -> None:
        with self._lock:
            if self._session is not None:
                self._session.close()
                self._session = None

    def _master(self, model_id: str):
        from pkcs11 import KeyType, ObjectClass
        from pkcs11.exceptions import NoSuchKey

        key = self._masters.get(model_id)
        if key is None:
            try:
                key = self._session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label=master_label(model_id))
            except NoSuchKey:
                raise CardKeyError(f"no card administration master key for model {model_id} in the token "
                                   f"(label {master_label(model_id)}): load it first") from None
            self._masters[model_id] = key
        return key

    def cryptogram(self, *, model_id: str, scheme: str, serial: str, challenge: bytes) -> bytes:
        """AES-128-ECB(K_card, challenge), K_card derived in the token from the model's master and the serial."""
        from pkcs11 import Attribute, KeyType, Mechanism

        block = diversification_block(scheme, serial)
        if len(challenge) != 16:
            raise ValueError("the challenge must be 16 bytes")
        with self._lock:
            master = self._master(model_id)
            card_key = master.derive_key(KeyType.AES, KEY_BITS, mechanism=Mechanism.AES_ECB_ENCRYPT_DATA,
                                         mechanism_param=block, template={
                                             Attribute.TOKEN: False, Attribute.SENSITIVE: True,
                                             Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True,
                                             Attribute.DECRYPT: False, Attribute.WRAP: False,
                                             Attribute.UNWRAP: False, Attribute.DERIVE: False})
            try:
                return bytes(card_key.encrypt(challenge, mechanism=Mechanism.AES_ECB))
            finally:
                card_key.destroy()

    def _template(self, model_id: str) -> dict:
        from pkcs11 import Attribute

        return {Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.LABEL: master_label(model_id),
                Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.DERIVE: True,
                Attribute.ENCRYPT: False, Attribute.DECRYPT: False, Attribute.WRAP: False,
                Attribute.UNWRAP: False, Attribute.SIGN: False, Attribute.VERIFY: False}

    def has_master(self, model_id: str) -> bool:
        try:
            with self._lock:
                self._master(model_id)
            return True
        except CardKeyError:
            return False

    def import_master(self, model_id: str, value: bytes) -> None:
        """Load a known master key (TEST deployments: the emulated cards' TEST master key)."""
        from pkcs11 import Attribute, KeyType, ObjectClass

        if len(value) != KEY_BITS // 8:
            raise ValueError("an AES-128 master key is 16 bytes")
        if self.has_master(model_id):
            raise CardKeyError(f"the token already holds a master key for model {model_id}")
        with self._lock:
            self._session.create_object({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES,
                                         Attribute.VALUE: value, **self._template(model_id)})

    def generate_master(self, model_id: str) -> None:
        """A fresh master key generated inside the token (production)."""
        from pkcs11 import KeyType

        if self.has_master(model_id):
            raise CardKeyError(f"the token already holds a master key for model {model_id}")
        with self._lock:
            self._session.generate_key(KeyType.AES, KEY_BITS, store=True, template=self._template(model_id))
