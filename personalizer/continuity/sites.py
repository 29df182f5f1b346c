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


# -- scripts/cluster up --sites ---------------------------------------------------------------------------

SITE_NAMES = ("a", "b")   # "primary site" and "DR site"; a on the Patroni node site-a's side, b on site-b's
START_TIMEOUT_S = 60.0


def ports_of(cluster) -> dict:
    """The sites' ports after the cluster's six: gRPC base+6 (a), base+7 (b); CRL/OCSP base+8, base+9."""
    b = cluster.ports.base
    return {"a": (b + 6, b + 8), "b": (b + 7, b + 9)}


def _listening(port: int) -> bool:
    import socket
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _both_endpoints(config: Path, out: Path, ports: dict) -> Path:
    text = re.sub(r'primary = "[^"]+"', f'primary = "127.0.0.1:{ports["a"][0]}"\ndr = "127.0.0.1:{ports["b"][0]}"',
                  config.read_text())
    out.write_text(text)
    return out


def up(cluster, *, log=print) -> dict:
    """Two ``cns-personalizer serve`` on the running cluster, recorded in its state so ``down`` stops them.

    First time: a test deployment under ``<run dir>/deployment`` with the CA key in a SoftHSM2 token
    (``put_ca_key_in_token``), one token copy and config per site; the station's and cnsctl's configs
    with both endpoints (``station-both.toml``, ``admin-both.toml``). Again: restarts a site not running."""
    import time

    ports = ports_of(cluster)
    root = cluster.run_dir / "deployment"
    if not (root / "personalizer.toml").exists():
        dep = deploy.init_deployment(root, chamber="RM", station_id="RM-STATION-01", listen="127.0.0.1:0")
        put_ca_key_in_token(dep)
    else:
        dep = _existing(root)
    venv_bin = Path(sys.executable).parent
    out = {"deployment": str(root), "sites": {}}
    for name in SITE_NAMES:
        port, pki = ports[name]
        key = f"personalizer-{name}"
        running = key in cluster.procs and _listening(port)
        if not running:
            if _listening(port):
                raise SitesError(f"port {port} for site {name} is in use by another program: choose another "
                                 "--port-base")
            sc = site_config(dep, cluster, name, port=port, pki_port=pki, crl_refresh_s=60)
            cluster._spawn(key, [str(venv_bin / "cns-personalizer"), "--log-level", "WARNING", "serve",
                                 "--config", str(sc.config)], cluster.run_dir / f"{key}.log", None, env=sc.env)
        out["sites"][name] = {"grpc": f"127.0.0.1:{port}", "crl_ocsp": f"http://127.0.0.1:{pki}",
                              "token": str(root / f"hsm-{name}" / "tokens")}
    deadline = time.monotonic() + START_TIMEOUT_S
    for name in SITE_NAMES:
        while not _listening(ports[name][0]):
            if time.monotonic() > deadline:
                raise SitesError(f"site {name} does not listen on {ports[name][0]} after {START_TIMEOUT_S:.0f} s; "
                                 f"see {cluster.run_dir / f'personalizer-{name}.log'}")
            time.sleep(0.25)
    out["station_config"] = str(_both_endpoints(dep.station_config, dep.station_config.with_name("station-both.toml"),
                                                ports))
    out["admin_config"] = str(_both_endpoints(dep.admin_config, dep.admin_config.with_name("admin-both.toml"), ports))
    return out


def _existing(root: Path):
    """The deployment ``up`` wrote before (its files, not a new CA)."""
    from types import SimpleNamespace
    station = next((root / "stations").glob("*/station.toml"))
    return SimpleNamespace(root=root, server_config=root / "personalizer.toml", station_config=station,
                           admin_config=root / "admin" / "admin.toml")
