"""``[card_admin]`` of the daemon's config, and the CardAdmin service on the daemon's server.

    [card_admin]
    pkcs11_module = "/usr/lib/softhsm/libsofthsm2.so"
    token_label = "cns-card-admin"
    pin_file = "hsm/pin"                 # the token user's PIN, mode 0600
    softhsm2_conf = "hsm/softhsm2.conf"  # SoftHSM2 only: where its tokens are
    per_minute = 120                     # answers per station per minute

Without the section no station can administer a card (there is no fallback
key anywhere). Paths are relative to the config file; the service is added by
``personalizer.edge.card_admin_service.register``. Errors are ``ConfigError`` naming the file
and the key.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from personalizer.cardadmin.keys import CardKeyError
from personalizer.cardadmin.worker import TokenProcess
from personalizer.errors import ConfigError

SECTION = "card_admin"
KEYS = {"pkcs11_module", "token_label", "pin_file", "softhsm2_conf", "per_minute", "unlisted_blank_cards"}
UNLISTED = ("refuse", "allow")


@dataclass(frozen=True)
class CardAdminConfig:
    pkcs11_module: str
    token_label: str
    pin_file: Path
    softhsm2_conf: Path | None
    per_minute: int
    allow_unlisted_blank_cards: bool = False   # "allow" in TEST deployments only (emulated cards, no batches)


def load(source: Path) -> CardAdminConfig | None:
    data = tomllib.loads(Path(source).read_text(encoding="utf-8")).get(SECTION)
    if data is None:
        return None
    if not isinstance(data, dict):
        raise ConfigError(source, SECTION, "expected a table")
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise ConfigError(source, f"{SECTION}.{unknown[0]}", f"unknown key; expected one of {sorted(KEYS)}")

    def text(key: str, required: bool = True) -> str | None:
        v = data.get(key)
        if v is None and not required:
            return None
        if not isinstance(v, str) or not v:
            raise ConfigError(source, f"{SECTION}.{key}", "expected a non-empty string")
        return v

    def path(key: str, required: bool = True) -> Path | None:
        v = text(key, required)
        if v is None:
            return None
        p = Path(v) if Path(v).is_absolute() else Path(source).parent / v
        if not p.exists():
            raise ConfigError(source, f"{SECTION}.{key}", f"file not found: {p}")
        return p

    per_minute = data.get("per_minute", 120)
    if not isinstance(per_minute, int) or isinstance(per_minute, bool) or not 1 <= per_minute <= 6000:
        raise ConfigError(source, f"{SECTION}.per_minute", f"expected 1 to 6000 answers a minute, got {per_minute!r}")
    unlisted = data.get("unlisted_blank_cards", "refuse")
    if unlisted not in UNLISTED:
        raise ConfigError(source, f"{SECTION}.unlisted_blank_cards",
                          f'expected "refuse" (a blank card must be in a batch loaded with `cnsctl cards load-batch`) '
                          f'or "allow" (TEST deployments), got {unlisted!r}')
    pin_file = path("pin_file")
    if pin_file.stat().st_mode & 0o077:
        raise ConfigError(source, f"{SECTION}.pin_file", f"{pin_file} holds the token PIN: make it readable by "
                                                          "the daemon's user only (chmod 600)")
    return CardAdminConfig(pkcs11_module=text("pkcs11_module"), token_label=text("token_label"),
                           pin_file=pin_file, softhsm2_conf=path("softhsm2_conf", required=False),
                           per_minute=per_minute, allow_unlisted_blank_cards=unlisted == "allow")


def open_token(cfg: CardAdminConfig, source: Path) -> TokenProcess:
    try:
        return TokenProcess(module=cfg.pkcs11_module, token_label=cfg.token_label,
                            pin=cfg.pin_file.read_text().strip(), softhsm2_conf=cfg.softhsm2_conf)
    except CardKeyError as exc:
        raise ConfigError(source, SECTION, str(exc)) from None


SOFTHSM2_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
TEST_TOKEN_LABEL = "cns-card-admin"
SOFTHSM2_CONF = """\
# SoftHSM2 tokens of this TEST deployment's card administration master keys
directories.tokendir = {tokens}
objectstore.backend = file
log.level = ERROR
"""
SECTION_TOML = """
# Card administration master keys (issue 12): in a PKCS#11 token, never on a workstation.
# This TEST deployment's SoftHSM2 token holds the emulated card models' TEST master keys.
[card_admin]
pkcs11_module = "{module}"
token_label = "{label}"
pin_file = "hsm/pin"
softhsm2_conf = "hsm/softhsm2.conf"
per_minute = 600
# TEST deployment: the emulated blank cards come keyed with their own diversified key, in no batch. Production
# leaves this out ("refuse"): a blank card is personalized only from a batch loaded with `cnsctl cards load-batch`.
unlisted_blank_cards = "allow"
"""


def init_test_token(root: Path, *, module: str = SOFTHSM2_MODULE) -> str:
    """A SoftHSM2 token under ``root/hsm`` holding each model's TEST master key (non-extractable);
    returns the ``[card_admin]`` section for the daemon's config. Needs softhsm2-util."""
    import secrets
    import shutil
    import subprocess

    from personalizer.ca.keys import write_private

    util = shutil.which("softhsm2-util")
    if util is None or not Path(module).exists():
        raise ConfigError(root, SECTION, "SoftHSM2 is needed for the card administration keys "
                                         "(apt-get install softhsm2)")
    hsm = root / "hsm"
    (hsm / "tokens").mkdir(parents=True, exist_ok=True)
    conf = hsm / "softhsm2.conf"
    conf.write_text(SOFTHSM2_CONF.format(tokens=hsm / "tokens"))
    pin = secrets.token_hex(8)
    write_private(hsm / "pin", pin.encode() + b"\n")
    done = subprocess.run([util, "--init-token", "--free", "--label", TEST_TOKEN_LABEL, "--pin", pin,
                           "--so-pin", secrets.token_hex(8)], env={"SOFTHSM2_CONF": str(conf)},
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ConfigError(root, SECTION, f"softhsm2-util --init-token failed: {done.stderr.strip()}")
    from firmware_profiles import load_models

    token = TokenProcess(module=module, token_label=TEST_TOKEN_LABEL, pin=pin, softhsm2_conf=conf)
    try:
        for m in load_models().values():
            token.import_master(m.id, m.dialect.admin_test_master_key)
    except CardKeyError as exc:
        raise ConfigError(root, SECTION, f"cannot load the TEST master keys: {exc}") from None
    finally:
        token.close()
    return SECTION_TOML.format(module=module, label=TEST_TOKEN_LABEL)
