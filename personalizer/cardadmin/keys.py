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

Transport keys (item 3): blank cards of a batch arrive keyed with the batch's
manufacturer transport key. ``load_batch`` puts it in the token (label
``cns-card-transport:<batch>``, sensitive, non-extractable, usable to encrypt a
challenge and to wrap) beside a data object ``cns-card-batch:<batch>`` saying
the batch's chamber, model and serial range: the per-card stock. While a card
reports the transport key version, ``cryptogram(key_version=0)`` answers with
its batch's transport key, and ``wrapped_card_key`` gives PUT KEY's data: the
card's own key derived in the token (sensitive; extractable only wrapped) and
wrapped under the transport key with ``CKM_AES_KEY_WRAP`` (RFC 3394).

``import_master`` is for TEST deployments (the emulated cards' TEST master key,
``cns-personalizer init``). Production uses ``cns-personalizer card-keys``
(``personalizer.cardadmin.ceremony``): ``generate_master`` makes the master
inside the token (``CKA_LOCAL``: it never existed outside), or
``unwrap_master`` takes one the card factory's key ceremony delivered wrapped
(RFC 3394, ``CKM_AES_KEY_WRAP``) under a key-encryption key already in the
token, unwrapped inside the token; ``master_info`` says how a master was made
(its attributes only, never a key byte).

SoftHSM2 finds its tokens through ``SOFTHSM2_CONF``; ``softhsm2_conf`` sets it for
this process before the module is loaded. PKCS#11 sessions are not shared
between threads: calls are serialised by a lock (the daemon calls from a worker
thread). Must not import grpc, proto or the store; never logs a PIN or a key.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from firmware_profiles.admin_keys import diversification_block
from personalizer.errors import PersonalizerError

LABEL_PREFIX = "cns-card-admin:"
TRANSPORT_PREFIX = "cns-card-transport:"
BATCH_PREFIX = "cns-card-batch:"
KEY_BITS = 128
KVN_TRANSPORT, KVN_CARD = 0, 1


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
        self._lock = threading.RLock()   # batch_of is also called with it held
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

    def _card_key(self, model_id: str, scheme: str, serial: str, *, wrappable: bool = False):
        from pkcs11 import Attribute, KeyType, Mechanism

        block = diversification_block(scheme, serial)
        return self._master(model_id).derive_key(
            KeyType.AES, KEY_BITS, mechanism=Mechanism.AES_ECB_ENCRYPT_DATA, mechanism_param=block, template={
                Attribute.TOKEN: False, Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: wrappable,
                Attribute.ENCRYPT: True, Attribute.DECRYPT: False, Attribute.WRAP: False,
                Attribute.UNWRAP: False, Attribute.DERIVE: False})

    def cryptogram(self, *, model_id: str, scheme: str, serial: str, challenge: bytes,
                   key_version: int = KVN_CARD) -> bytes:
        """AES-128-ECB(K, challenge): K the card's own key derived in the token from the model's master and
        the serial, or (``key_version`` 0) its batch's transport key."""
        from pkcs11 import Mechanism

        if len(challenge) != 16:
            raise ValueError("the challenge must be 16 bytes")
        with self._lock:
            if key_version == KVN_TRANSPORT:
                return bytes(self._transport(serial).encrypt(challenge, mechanism=Mechanism.AES_ECB))
            card_key = self._card_key(model_id, scheme, serial)
            try:
                return bytes(card_key.encrypt(challenge, mechanism=Mechanism.AES_ECB))
            finally:
                card_key.destroy()

    def wrapped_card_key(self, *, model_id: str, scheme: str, serial: str) -> bytes:
        """PUT KEY's data: the card's own key wrapped (RFC 3394) under its batch's transport key, in the token."""
        from pkcs11 import Mechanism

        with self._lock:
            transport = self._transport(serial)
            card_key = self._card_key(model_id, scheme, serial, wrappable=True)
            try:
                return bytes(transport.wrap_key(card_key, mechanism=Mechanism.AES_KEY_WRAP))
            finally:
                card_key.destroy()

    # -- batches: the per-card stock and its transport keys --------------------------------
    def batches(self) -> list[dict]:
        from pkcs11 import Attribute, ObjectClass

        with self._lock:
            out = []
            for obj in self._session.get_objects({Attribute.CLASS: ObjectClass.DATA}):
                if str(obj[Attribute.LABEL]).startswith(BATCH_PREFIX):
                    out.append(json.loads(bytes(obj[Attribute.VALUE])))
            return sorted(out, key=lambda b: b["batch"])

    def batch_of(self, serial: str) -> dict | None:
        """The loaded batch whose serial range holds ``serial``, or None."""
        for b in self.batches():
            if len(b["first"]) == len(serial) and b["first"] <= serial <= b["last"]:
                return b
        return None

    def _transport(self, serial: str):
        from pkcs11 import KeyType, ObjectClass
        from pkcs11.exceptions import NoSuchKey

        batch = self.batch_of(serial)
        if batch is None:
            raise CardKeyError(f"card {serial} reports a transport key but is in no batch loaded here: central "
                               "IT loads the batch's transport key with `cnsctl cards load-batch`")
        try:
            return self._session.get_key(ObjectClass.SECRET_KEY, KeyType.AES,
                                         label=TRANSPORT_PREFIX + batch["batch"])
        except NoSuchKey:
            raise CardKeyError(f"no transport key for batch {batch['batch']} in the token") from None

    def load_batch(self, *, batch: str, chamber: str, model_id: str, first: str, last: str, key: bytes) -> None:
        """A batch of blank cards: its transport key (never readable again) and its stock record."""
        from pkcs11 import Attribute, KeyType, ObjectClass

        if len(key) != KEY_BITS // 8:
            raise ValueError("a transport key is 16 bytes (AES-128)")
        if len(first) != len(last) or first > last:
            raise ValueError("the serial range is FIRST..LAST, both of the same length, FIRST not after LAST")
        for b in self.batches():
            if b["batch"] == batch:
                raise CardKeyError(f"batch {batch} is already loaded")
            if len(b["first"]) == len(first) and not (last < b["first"] or first > b["last"]):
                raise CardKeyError(f"serials {first}..{last} overlap batch {b['batch']} ({b['first']}..{b['last']})")
        record = {"batch": batch, "chamber": chamber, "model": model_id, "first": first, "last": last}
        with self._lock:
            self._session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.KEY_TYPE: KeyType.AES, Attribute.VALUE: key,
                Attribute.TOKEN: True, Attribute.PRIVATE: True, Attribute.LABEL: TRANSPORT_PREFIX + batch,
                Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.ENCRYPT: True,
                Attribute.WRAP: True, Attribute.DECRYPT: False, Attribute.UNWRAP: False, Attribute.DERIVE: False,
                Attribute.SIGN: False, Attribute.VERIFY: False})
            self._session.create_object({
                Attribute.CLASS: ObjectClass.DATA, Attribute.TOKEN: True, Attribute.PRIVATE: True,
                Attribute.LABEL: BATCH_PREFIX + batch, Attribute.APPLICATION: "cns-personalizer",
                Attribute.VALUE: json.dumps(record).encode()})

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

    def master_info(self, model_id: str) -> dict | None:
        """The master key's protection attributes (never its value), or None when there is none."""
        from pkcs11 import Attribute

        if not self.has_master(model_id):
            return None
        with self._lock:
            key = self._master(model_id)
            info = {"label": master_label(model_id)}
            for name, attr in (("sensitive", Attribute.SENSITIVE), ("extractable", Attribute.EXTRACTABLE),
                               ("always_sensitive", Attribute.ALWAYS_SENSITIVE),
                               ("never_extractable", Attribute.NEVER_EXTRACTABLE),
                               ("generated_in_token", Attribute.LOCAL), ("derive", Attribute.DERIVE),
                               ("encrypt", Attribute.ENCRYPT), ("wrap", Attribute.WRAP)):
                info[name] = bool(key[attr])
            return info

    def unwrap_master(self, model_id: str, wrapped: bytes, unwrapping_label: str) -> None:
        """A master key delivered wrapped (RFC 3394) under the token's AES key ``unwrapping_label``, unwrapped
        inside the token into a non-extractable, sensitive, derive-only key."""
        import pkcs11
        from pkcs11 import KeyType, Mechanism, ObjectClass
        from pkcs11.exceptions import NoSuchKey

        if len(wrapped) != KEY_BITS // 8 + 8:
            raise ValueError(f"a wrapped AES-128 master key is {KEY_BITS // 8 + 8} bytes (RFC 3394), got {len(wrapped)}")
        if self.has_master(model_id):
            raise CardKeyError(f"the token already holds a master key for model {model_id} "
                               f"(label {master_label(model_id)}); it is never overwritten")
        with self._lock:
            try:
                kek = self._session.get_key(ObjectClass.SECRET_KEY, KeyType.AES, label=unwrapping_label)
            except NoSuchKey:
                raise CardKeyError(f"no AES key-encryption key labelled {unwrapping_label!r} in the token") from None
            try:
                kek.unwrap_key(ObjectClass.SECRET_KEY, KeyType.AES, wrapped, label=master_label(model_id),
                               mechanism=Mechanism.AES_KEY_WRAP, store=True, template=self._template(model_id))
            except pkcs11.PKCS11Error as exc:
                raise CardKeyError(f"the wrapped key does not unwrap under {unwrapping_label!r} "
                                   f"({type(exc).__name__}): a wrong key-encryption key, a key-encryption key "
                                   "that may not unwrap, or a damaged file") from None

    def generate_master(self, model_id: str) -> None:
        """A fresh master key generated inside the token (production)."""
        from pkcs11 import KeyType

        if self.has_master(model_id):
            raise CardKeyError(f"the token already holds a master key for model {model_id} "
                               f"(label {master_label(model_id)}); it is never overwritten")
        with self._lock:
            self._session.generate_key(KeyType.AES, KEY_BITS, store=True, template=self._template(model_id))
