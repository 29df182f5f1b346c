"""The two personalizer sites on the replicated database: one CA key, held in a token copied to both sites.

Used by ``scripts/drill`` and ``scripts/cluster up --sites``. Given a test deployment (``personalizer.deploy``)
and a running ``cluster.Cluster``:

- ``put_ca_key_in_token(dep)`` makes the embedded CA's issuing key a PKCS#11 key: a SoftHSM2 token
  ``cns-ca`` in the deployment's ``hsm/tokens`` (beside the card administration token), an RSA key
  generated inside it (CKA_EXTRACTABLE false, CKA_SENSITIVE true), the issuing certificate re-made for
  it; no issuing key file is left. The PIN is in ``hsm/ca-pin`` (0600).
- ``site_config(dep, cluster, name, ...)`` copies the token folder to ``hsm-<name>/`` (what an HSM
  cluster does between its members: each site signs with its own copy, never over the network; SoftHSM2
  stores objects encrypted under a key derived from the user PIN, so a copy never holds the key in the
  clear) and writes ``server-<name>.toml``: the shared database (DSN listing both nodes,
  ``target_session_attrs=read-write``), the site's own data folder, port, CRL/OCSP port, and
  ``[ca] key_store = "pkcs11"`` / ``[card_admin]`` on the site's copy. ``SiteConfig.env`` is the
  environment the site's process needs (``SOFTHSM2_CONF`` of its copy).

Imports ``personalizer.deploy``, ``personalizer.cardadmin.setup`` (the SoftHSM2 module path and
config format) and ``personalizer.ca.keys.write_private``; no grpc, no proto, no broker.
"""
from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from personalizer import deploy
from personalizer.ca.keys import write_private
from personalizer.cardadmin.setup import SOFTHSM2_CONF, SOFTHSM2_MODULE

CA_TOKEN_LABEL = "cns-ca"
CA_KEY_LABEL = "cns-issuing"
ROOT = Path(__file__).resolve().parents[2]

_KEYGEN = """
import sys, pkcs11
from pkcs11 import Attribute, KeyType
module, label, pin, key_label, bits = sys.argv[1:6]
with pkcs11.lib(module).get_token(token_label=label).open(rw=True, user_pin=pin) as s:
    pub, _ = s.generate_keypair(KeyType.RSA, int(bits), label=key_label, store=True,
                                private_template={Attribute.EXTRACTABLE: False, Attribute.SENSITIVE: True})
    print(int.from_bytes(pub[Attribute.MODULUS], "big"), int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big"))
"""


class SitesError(Exception):
    """A site cannot be prepared (SoftHSM2 missing, a token command failed): one line."""


@dataclass(frozen=True)
class SiteConfig:
    name: str
    config: Path          # server-<name>.toml
    port: int             # gRPC
    pki_port: int         # CRL and OCSP over HTTP
    env: dict             # SOFTHSM2_CONF of the site's own token copy
    token_dir: Path       # hsm-<name>/tokens


def _softhsm_env(conf: Path) -> dict:
    import os
    return {**os.environ, "SOFTHSM2_CONF": str(conf), "PYTHONPATH": str(ROOT)}


def put_ca_key_in_token(dep, *, key_bits: int = deploy.DEFAULT_CA_KEY_BITS, module: str = SOFTHSM2_MODULE) -> None:
    """Move the deployment's CA to a key generated in a SoftHSM2 token (before anything is issued)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    util = shutil.which("softhsm2-util")
    if util is None or not Path(module).exists():
        raise SitesError("SoftHSM2 is needed for the CA key of the two sites (apt-get install softhsm2)")
    hsm = dep.root / "hsm"
    conf = hsm / "softhsm2.conf"
    if not conf.exists():   # the card administration token's folder (deploy) is normally there already
        (hsm / "tokens").mkdir(parents=True, exist_ok=True)
        conf.write_text(SOFTHSM2_CONF.format(tokens=hsm / "tokens"))
    pin = secrets.token_hex(8)
    write_private(hsm / "ca-pin", pin.encode() + b"\n")
    done = subprocess.run([util, "--init-token", "--free", "--label", CA_TOKEN_LABEL, "--pin", pin,
                           "--so-pin", secrets.token_hex(8)], env=_softhsm_env(conf), capture_output=True, text=True)
    if done.returncode != 0:
        raise SitesError(f"softhsm2-util --init-token failed: {done.stderr.strip()}")
    # a child process: SoftHSM2 reads SOFTHSM2_CONF once per process, at its first C_Initialize
    gen = subprocess.run([sys.executable, "-c", _KEYGEN, module, CA_TOKEN_LABEL, pin, CA_KEY_LABEL, str(key_bits)],
                         env=_softhsm_env(conf), capture_output=True, text=True, timeout=300)
    if gen.returncode != 0:
        raise SitesError(f"cannot generate the CA key in the token: {gen.stderr.strip().splitlines()[-1:]}")
    n, e = (int(x) for x in gen.stdout.split())
    ca_dir = dep.root / "ca"
    for old in ("issuing.key.pem",):
        (ca_dir / old).unlink(missing_ok=True)
    deploy.create_ca(ca_dir, key_bits=key_bits, issuing_public_key=rsa.RSAPublicNumbers(e, n).public_key())
    text = dep.server_config.read_text()
    ca = (f'[ca]\nconnector = "embedded"\nroot_cert = "ca/root.pem"\nissuing_cert = "ca/issuing.pem"\n'
          f'key_store = "pkcs11"\npkcs11_module = "{module}"\ntoken_label = "{CA_TOKEN_LABEL}"\n'
          f'key_label = "{CA_KEY_LABEL}"\npin_file = "hsm/ca-pin"\n')
    text, count = re.subn(r"\[ca\]\n(?:[^\[\n].*\n)*", ca + "\n", text)
    if count != 1:
        raise SitesError(f"{dep.server_config}: no [ca] section to change")
    dep.server_config.write_text(text)


def copy_token(dep, name: str) -> Path:
    """``hsm/`` copied to ``hsm-<name>/`` with its own softhsm2.conf; returns that conf."""
    src, dst = dep.root / "hsm", dep.root / f"hsm-{name}"
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst)   # copy2: the PIN files keep mode 0600
    conf = dst / "softhsm2.conf"
    conf.write_text(SOFTHSM2_CONF.format(tokens=dst / "tokens"))
    return conf


def site_config(dep, cluster, name: str, *, port: int, pki_port: int, crl_refresh_s: int,
                enrollment: bool = False) -> SiteConfig:
    """The deployment's server config for one site: the shared database, its own data folder, ports and
    token copy (``put_ca_key_in_token`` first)."""
    from personalizer.continuity.cluster import SITES

    conf = copy_token(dep, name)
    text = dep.server_config.read_text().replace('"hsm/', f'"hsm-{name}/')
    pw = dep.root / f"pg-password-{name}"
    write_private(pw, cluster.secrets()["app"].encode() + b"\n")
    ports = ",".join(str(cluster.ports.pg(s)) for s in SITES)
    store = (f'[store]\ndata_dir = "data-{name}"\nsynchronous = "FULL"\nbackend = "postgresql"\n'
             f'dsn = "host=127.0.0.1,127.0.0.1 port={ports} dbname=cns user=cns '
             f'target_session_attrs=read-write connect_timeout=2"\npassword_file = "{pw.name}"\n')
    text = re.sub(r"\[store\]\n(?:[^\[\n].*\n)*", store + "\n", text)
    text = re.sub(r'(\[server\]\n(?:[^\[\n].*\n)*?)listen = "[^"]*"', rf'\1listen = "127.0.0.1:{port}"', text, count=1)
    if not enrollment:
        text = text.replace("[enrollment]\nenabled = true", "[enrollment]\nenabled = false")
    text += (f'\n[pki]\nenabled = true\nhttp_host = "127.0.0.1"\nhttp_port = {pki_port}\n'
             f'crl_dir = "crl-{name}"\n'
             # both sites are active on one database: each republishes from it every few seconds, so a
             # revocation done at one site is in the other's CRL within this time (OCSP reads it live)
             f'refresh_seconds = {crl_refresh_s}\n')
    path = dep.root / f"server-{name}.toml"
    path.write_text(text)
    return SiteConfig(name=name, config=path, port=port, pki_port=pki_port,
                      env={"SOFTHSM2_CONF": str(conf)}, token_dir=conf.parent / "tokens")
