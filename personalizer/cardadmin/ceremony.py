"""``cns-personalizer card-keys``: the production card administration master keys (issue 12).

    card-keys status --config FILE [--json]
    card-keys init   --config FILE (--model MODEL ... | --all)
    card-keys import --config FILE --model MODEL --wrapped FILE --unwrapping-key LABEL

The token is the one the daemon's ``[card_admin]`` section names (module, token
label, PIN file, SoftHSM2 configuration); only that section of FILE is read.
``init`` generates each model's AES-128 master key INSIDE the token
(``CardKeyToken.generate_master``: sensitive, non-extractable, derive-only, so
no byte of it ever exists outside the HSM); the card factory then loads the
cards' diversified keys through the HSM vendor's key ceremony. ``import`` is
the other way round: a master key the factory's ceremony delivered wrapped
(RFC 3394 AES key wrap, a file of 48 hex digits) under a key-encryption key
already in the token (label ``--unwrapping-key``, allowed to unwrap) is
unwrapped inside the token. Both refuse a model whose master already exists
(a label is never overwritten: cards keyed under it would be lost). ``status``
says, per known card model, whether the master is there and how it is
protected. Nothing here prints, logs or returns key material.

Imports ``keys``, ``setup``, ``worker`` and ``firmware_profiles`` (the model ids); never grpc or proto.
"""
from __future__ import annotations

from pathlib import Path

from personalizer.cardadmin import setup
from personalizer.errors import ConfigError, InvalidRequest

WRAPPED_HEX = 48        # an AES-128 key wrapped by RFC 3394: 24 bytes


def _models() -> list[str]:
    from firmware_profiles import load_models
    return sorted(load_models())


def _token(config: Path):
    cfg = setup.load(config)
    if cfg is None:
        raise ConfigError(config, setup.SECTION, "no [card_admin] section: name the card administration token "
                                                 "(pkcs11_module, token_label, pin_file) first")
    return setup.open_token(cfg, config)


def _check_models(models: list[str]) -> list[str]:
    known = _models()
    for m in models:
        if m not in known:
            raise InvalidRequest("--model", f"unknown card model {m!r}; known: {', '.join(known)}")
    return models


def status(config: Path) -> list[dict]:
    token = _token(config)
    try:
        return [{"model": m, "present": (info := token.master_info(m)) is not None, **(info or {})}
                for m in _models()]
    finally:
        token.close()


def init(config: Path, models: list[str]) -> list[dict]:
    """Generate each model's master key in the token; all models are checked before the first is made."""
    models = _check_models(models)
    token = _token(config)
    try:
        for m in models:
            if token.has_master(m):
                raise InvalidRequest("--model", f"the token already holds a master key for model {m}; it is never "
                                                "overwritten (nothing was generated)")
        for m in models:
            token.generate_master(m)
        return [{"model": m, **token.master_info(m)} for m in models]
    finally:
        token.close()


def read_wrapped(path: Path) -> bytes:
    try:
        text = "".join(Path(path).read_text(encoding="ascii").split())
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidRequest("--wrapped", f"cannot read {path} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        value = bytes.fromhex(text)
    except ValueError:
        value = b""
    if len(text) != WRAPPED_HEX or len(value) * 2 != WRAPPED_HEX:
        raise InvalidRequest("--wrapped", f"{path} must hold the wrapped master key as {WRAPPED_HEX} hexadecimal "
                                          "digits (RFC 3394 AES key wrap of an AES-128 key)")
    return value


def import_wrapped(config: Path, model: str, wrapped_file: Path, unwrapping_label: str) -> dict:
    _check_models([model])
    wrapped = read_wrapped(wrapped_file)
    if not unwrapping_label:
        raise InvalidRequest("--unwrapping-key", "the label of the token's key-encryption key")
    token = _token(config)
    try:
        token.unwrap_master(model, wrapped, unwrapping_label)
        return {"model": model, **token.master_info(model)}
    finally:
        token.close()


def describe(row: dict) -> str:
    if not row.get("present", True):
        return f"{row['model']}: no master key (create it with `cns-personalizer card-keys init --model {row['model']}`)"
    how = "generated in the token" if row["generated_in_token"] else "imported (unwrapped in the token)"
    safe = row["sensitive"] and not row["extractable"]
    return (f"{row['model']}: master key {row['label']}, {how}, "
            + (("sensitive, never extractable" if row["never_extractable"] else "sensitive, not extractable")
               if safe else f"NOT PROTECTED (sensitive={row['sensitive']}, extractable={row['extractable']})")
            + (", derive only" if row["derive"] and not row["encrypt"] and not row["wrap"] else ""))
