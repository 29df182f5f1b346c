"""The main job on embedded defaults: a blank emulated CNS card personalized end to end.

init a test deployment → start the personalizer (mTLS) → start a private pcscd
and a blank emulated card on its vpcd reader → start the agent as the current
user → personalize a sample holder → show what OpenSC sees, sign through
OpenSC's PKCS#11 module and verify with openssl → stop everything it started.
Exits non-zero if any step fails. ``--json`` prints one JSON object at the end.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OPENSC_PKCS11 = "/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so"
sys.path.insert(0, str(ROOT))

from firmware_profiles import load_models  # noqa: E402
from firmware_profiles.emulator.pcscd import start_pcscd  # noqa: E402

HOLDER = """[holder]
codice_fiscale = "RSSMRA80A01H501U"
given_name = "Mario"
surname = "Rossi"
birth_date = "1980-01-01"
sex = "M"
birth_town = "ROMA"
issuer = "CCIAA di Roma"
"""


class Step:
    def __init__(self, quiet: bool):
        self.quiet, self.n = quiet, 0

    def __call__(self, text: str) -> None:
        self.n += 1
        if not self.quiet:
            print(f"[{self.n:2}] {text}", flush=True)


def wait_for(predicate, what: str, timeout: float = 30.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise RuntimeError(f"timed out waiting for {what}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="infocamere-cns-2048", help="card model (cns-emulator list)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp dir)")
    ap.add_argument("--timing", default="zero", choices=["zero", "realistic"])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--agent", type=Path, default=BIN / "cns-agent",
                    help="the cns-agent to run (default: the venv's; e.g. the one-file build in dist/)")
    args = ap.parse_args(argv)
    agent = args.agent.resolve()
    step = Step(args.json)
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="cns-demo-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model = load_models()[args.profile]
    procs: list[tuple[str, subprocess.Popen]] = []
    pcscd = None
    report: dict = {"profile": args.profile, "workdir": str(work)}

    def spawn(name, cmd, **kw):
        log = open(work / f"{name}.log", "wb")
        p = subprocess.Popen(cmd, stdout=kw.pop("stdout", log), stderr=log, stdin=subprocess.DEVNULL, **kw)
        procs.append((name, p))
        return p

    try:
        step("init a test deployment (embedded CA, server and station certificates)")
        dep = work / "deploy"
        if not (dep / "personalizer.toml").exists():
            subprocess.run([BIN / "cns-personalizer", "init", str(dep), "--listen", "127.0.0.1:0"], check=True,
                           stdout=subprocess.DEVNULL)
        server_cfg = dep / "personalizer.toml"
        text = server_cfg.read_text()
        if model.rsa_bits < 2048:  # the legacy RSA-1024 model: this demo deployment opts in
            server_cfg.write_text(text.replace("min_rsa_bits = 2048", "min_rsa_bits = 1024"))

        step("start the personalizer (gRPC, mutual TLS)")
        daemon = spawn("personalizer", [BIN / "cns-personalizer", "serve", "--config", str(server_cfg)],
                       stdout=subprocess.PIPE)
        line = daemon.stdout.readline().decode()
        m = re.search(r"listening on port (\d+)", line)
        if not m:
            raise RuntimeError(f"personalizer did not start: {line!r} (see {work / 'personalizer.log'})")
        port = int(m.group(1))
        station_toml = next((dep / "stations").glob("*/station.toml"))
        st = re.sub(r'primary = "([^"]*):\d+"', rf'primary = "\g<1>:{port}"', station_toml.read_text())
        station_toml.write_text(st)
        report["personalizer_port"] = port

        step("start a private pcscd with the vpcd virtual reader")
        pcscd = start_pcscd(work / "pcscd")
        env = pcscd.env

        step(f"insert a blank emulated card: {model.name}")
        spawn("emulator", [BIN / "cns-emulator", "serve", "--profile", args.profile, "--vpcd",
                           pcscd.vpcd_address(0), "--state", str(work / "card.json"), "--timing", args.timing],
              env=env)
        reader = pcscd.reader_names[0]

        step("start the agent as the current user")
        sock = work / "agent" / "agent.sock"
        (work / "agent").mkdir(mode=0o700, exist_ok=True)
        spawn("agent", [agent, "run", "--config", str(station_toml), "--socket", str(sock)], env=env)

        def card_ready():
            r = subprocess.run([agent, "devices", "--json", "--socket", str(sock)], env=env,
                               capture_output=True, text=True)
            if r.returncode != 0:
                return None
            for rd in json.loads(r.stdout).get("readers", []):
                c = rd.get("card") or {}
                if rd.get("name") == reader and c.get("state") == "ready":
                    return c
            return None
        card = wait_for(card_ready, "the agent to see the card")
        step(f"agent sees card {card['serial']} ({card['model_id']}), blank={card.get('blank')}")
        report["card_serial"] = card["serial"]

        step("personalize the sample holder (keys on card, CSRs, CA, certificates written and verified)")
        (work / "holder.toml").write_text(HOLDER)
        codes = work / "codes.toml"
        pin = model.pin_policy.factory_test_pin or "24681357"
        puk = "" if model.pin_mode == "preset" else "97531864"
        codes.write_text(f'pin = "{pin}"\npuk = "{puk}"\n')
        codes.chmod(0o600)
        r = subprocess.run([agent, "personalize", "--reader", reader, "--holder", str(work / "holder.toml"),
                            "--codes-file", str(codes), "--socket", str(sock), "--json"],
                           env=env, capture_output=True, text=True, timeout=600)
        lines = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        for x in lines:
            if "step" in x and not args.json:
                print(f"       {x['step']:22} {x['message']}", flush=True)
        if r.returncode != 0:
            raise RuntimeError(f"personalization failed: {r.stderr.strip() or lines[-1:]}")
        result = lines[-1]["result"]
        report["personalization"] = result

        step("what OpenSC sees (pkcs15-tool -D)")
        time.sleep(0.5)
        dump = subprocess.run(["pkcs15-tool", "-D"], env=env, capture_output=True, text=True, timeout=60).stdout
        report["opensc_token_label"] = (re.search(r"PKCS#15 Card \[(.+?)\]", dump) or [None, ""])[1].strip()
        report["opensc_certificates"] = re.findall(r"X\.509 Certificate \[(.+?)\]", dump)
        if not args.json:
            print("\n".join("       " + x for x in dump.splitlines() if x.strip()), flush=True)

        step("sign through OpenSC's PKCS#11 module and verify with openssl")
        data = work / "message.txt"
        data.write_text("CNS demo\n")
        verified = []
        for slot_label, ks in (("CNS0", "CNS0"), ("CNS1", "CNS1")):
            pem = subprocess.run(["pkcs15-tool", "--read-certificate", _cert_id(dump, ks)], env=env,
                                 capture_output=True, check=True, timeout=60, text=True).stdout
            (work / f"{ks}.pem").write_text(pem)
            sig = work / f"{ks}.sig"
            token = _token_label(env, ks)
            subprocess.run(["pkcs11-tool", "--module", OPENSC_PKCS11, "--token-label", token, "--login", "--pin", pin,
                            "--sign", "--mechanism", "SHA256-RSA-PKCS", "--id", _key_id(dump, ks),
                            "--input-file", str(data), "--output-file", str(sig)], env=env, capture_output=True,
                           check=True, timeout=120)
            subprocess.run(["openssl", "x509", "-in", str(work / f"{ks}.pem"), "-pubkey", "-noout", "-out",
                            str(work / f"{ks}.pub")], check=True, capture_output=True)
            v = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(work / f"{ks}.pub"), "-signature",
                                str(sig), str(data)], capture_output=True, text=True)
            if v.returncode != 0:
                raise RuntimeError(f"{ks}: signature made through OpenSC does not verify: {v.stdout}{v.stderr}")
            verified.append(ks)
        report["opensc_signatures_verified"] = verified
        step("certificate subjects")
        for ks, subj in sorted(result["certificate_subjects"].items()):
            if not args.json:
                print(f"       {ks}: {subj}")
        report["ok"] = True
        return_code = 0
    except Exception as exc:  # the demo's one error handler: say what failed, where the logs are
        report["ok"], report["error"] = False, str(exc)
        print(f"demo: FAILED: {exc} (logs in {work})", file=sys.stderr)
        return_code = 1
    finally:
        for name, p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if pcscd is not None:
            pcscd.stop()
        if args.workdir is None and return_code == 0:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(report))
    elif return_code == 0:
        print("demo: OK — card personalized, read by OpenSC, signatures verified; everything stopped.")
    return return_code


def _section(dump: str, ks: str, kind: str) -> str:
    for block in re.split(r"\n(?=\S)", dump):
        if block.startswith(kind) and ks in block.splitlines()[0]:
            return block
    raise RuntimeError(f"OpenSC lists no {kind} for {ks}:\n{dump}")


def _cert_id(dump: str, ks: str) -> str:
    return re.search(r"ID\s*:\s*([0-9a-fA-F]+)", _section(dump, ks, "X.509 Certificate")).group(1)


def _key_id(dump: str, ks: str) -> str:
    return re.search(r"ID\s*:\s*([0-9a-fA-F]+)", _section(dump, ks, "Private RSA Key")).group(1)


def _token_label(env, ks: str) -> str:
    out = subprocess.run(["pkcs11-tool", "--module", OPENSC_PKCS11, "-L"], env=env, capture_output=True,
                         text=True, timeout=60).stdout
    for label in re.findall(r"token label\s*:\s*(.+)", out):
        if f"PIN {ks}" in label:
            return label.strip()
    raise RuntimeError(f"no PKCS#11 token for {ks}:\n{out}")


if __name__ == "__main__":
    sys.exit(main())
