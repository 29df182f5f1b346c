"""The one-file agent beside the venv's: binary size, start time, idle RSS and CPU (two readers, a card).

Start time is the wall time of ``cns-agent --version`` (median of ``--starts`` runs; the one-file
binary unpacks itself to a temporary folder on every start, so this is its real cost). Idle: a
private pcscd with two vpcd readers, an emulated card in the first, and the agents side by side for
``--window`` seconds (default 60) once each sees the card. RSS is the whole process tree (the
one-file bootloader and the Python process it starts), sampled every second, the peak reported;
CPU is the tree's user+system time over the window. Targets: RSS < 60 MB, CPU < 0.5 %.

Each agent runs as a station runs it (``--station enrolled``, the default): a test deployment
(``cns-personalizer init --no-demo-station``) and its daemon are started, central IT's
``cnsctl station add`` gives a one-time code per agent, each agent enrolls with it
(``cns-agent enroll``: station key, CSR, station certificate) and runs with the ``station.toml`` it
wrote (``cns-agent run --config``: device operations on, the personalizer reachable, the station
certificate checked at start). ``--station none`` runs them without a station configuration (readers
and cards watched, local API served, nothing else); ``--config station.toml`` with that one.
Each agent's figures say whether cryptography's native module is mapped (``cryptography_mapped``).

``--agent NAME=EXE`` (repeatable) measures another build beside the two in the same run, e.g. the
previous commit's one-file build or a wrapper running its checkout with this venv's Python.

Usage: scripts/bench agent [--binary dist/cns-agent] [--window 60] [--starts 5]
                           [--station enrolled|none | --config station.toml] [--agent NAME=EXE ...]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._daemon import personalizer_daemon
from firmware_profiles.emulator.pcscd import missing_tools, start_pcscd

ROOT = Path(__file__).resolve().parent.parent
TARGET_RSS_MB = 60.0
TARGET_CPU_PCT = 0.5
PROFILE = "infocamere-cns-2048"
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree(pid: int) -> list[int]:
    """pid and its descendants (from /proc: the one-file bootloader runs the agent as its child)."""
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                fields = Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()
                parent[int(d)] = int(fields[1])
            except (OSError, IndexError):
                pass
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def _cpu_s(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            f = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])          # utime, stime
        except (OSError, IndexError):
            pass
    return total / TICK


def _rss_mb(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            total += int(Path(f"/proc/{p}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError):
            pass
    return total / 2**20


def _maps_cryptography(pids: list[int]) -> bool:
    """Whether cryptography's native module (``_rust.abi3.so``) is mapped by any process of the tree."""
    for p in pids:
        try:
            if "/cryptography/hazmat/bindings/_rust" in Path(f"/proc/{p}/maps").read_text():
                return True
        except OSError:
            pass
    return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _enroll_stations(work: Path, variants: dict[str, str], env: dict, stack) -> dict[str, Path]:
    """A test deployment and its daemon (entered on ``stack``), and one station enrolled per agent, each with
    that agent: central IT's one-time code, ``cns-agent enroll``. Returns each agent's station.toml."""
    bin_dir = Path(sys.executable).parent
    dep = work / "deploy"
    subprocess.run([str(bin_dir / "cns-personalizer"), "init", str(dep), "--listen", "127.0.0.1:0",
                    "--no-demo-station"], check=True, capture_output=True, timeout=120)
    enroll_port = _free_port()
    cfg = dep / "personalizer.toml"
    text, n = re.subn(r'(\[enrollment\][^\[]*?address = )"[^"]*"', rf'\g<1>"127.0.0.1:{enroll_port}"',
                      cfg.read_text(), flags=re.S)
    if n != 1:
        raise RuntimeError(f"{cfg} has no [enrollment] address to set")
    cfg.write_text(text)
    port = stack.enter_context(personalizer_daemon(cfg))
    admin = dep / "admin" / "admin.toml"
    admin.write_text(admin.read_text().replace("127.0.0.1:0", f"127.0.0.1:{port}"))
    configs = {}
    for i, (name, exe) in enumerate(variants.items(), 1):
        sid = f"RM-BENCH-{i:02}"
        r = subprocess.run([str(bin_dir / "cnsctl"), "--config", str(admin), "--json", "station", "add",
                            "--station-id", sid, "--chamber", "RM"], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"cnsctl station add {sid}: {r.stderr.strip()[-300:]}")
        d = work / f"station-{name}"
        r = subprocess.run([exe, "enroll", "--code", json.loads(r.stdout)["code"], "--personalizer",
                            f"localhost:{port}", "--enroll-port", str(enroll_port), "--dir", str(d)],
                           capture_output=True, text=True, env=env, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"the {name} agent did not enroll: {r.stderr.strip()[-300:]}")
        configs[name] = d / "station.toml"
    return configs


def _start_s(argv: list[str], n: int, env: dict) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([*argv, "--version"], check=True, capture_output=True, env=env, timeout=120)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def _sees_card(agent: str, sock: Path, env: dict) -> bool:
    r = subprocess.run([agent, "devices", "--json", "--socket", str(sock)], capture_output=True, text=True,
                       env=env, timeout=30)
    if r.returncode != 0:
        return False
    readers = json.loads(r.stdout).get("readers", [])
    return len(readers) == 2 and any((rd.get("card") or {}).get("state") == "ready" for rd in readers)


def main(argv: list[str]) -> dict:
    ap = argparse.ArgumentParser(prog="bench agent")
    ap.add_argument("--binary", type=Path, default=ROOT / "dist" / "cns-agent",
                    help="the one-file build (made with scripts/build-agent when missing)")
    ap.add_argument("--window", type=float, default=60.0, help="idle measurement window, seconds")
    ap.add_argument("--starts", type=int, default=5, help="start-time samples per variant")
    ap.add_argument("--station", choices=("enrolled", "none"), default="enrolled",
                    help="enrolled: each agent enrolled with a running personalizer (default); none: no station")
    ap.add_argument("--config", type=Path, default=None, help="one station configuration for every agent instead")
    ap.add_argument("--agent", action="append", default=[], metavar="NAME=EXE",
                    help="another cns-agent to measure beside the two (repeatable)")
    opts = ap.parse_args(argv)
    extra_agents = {}
    for spec in opts.agent:
        name, sep, exe = spec.partition("=")
        if not sep or not name or not exe or name in ("onefile", "venv", *extra_agents):
            return {"ok": False, "error": f"--agent {spec!r}: expected NAME=EXE with a new NAME"}
        if not os.access(exe, os.X_OK):
            return {"ok": False, "error": f"--agent {spec!r}: {exe} is not an executable"}
        extra_agents[name] = str(Path(exe).resolve())
    missing = missing_tools()
    if missing:
        return {"ok": False, "error": f"missing {', '.join(missing)}: run scripts/setup (as root) first"}
    if not opts.binary.exists():
        subprocess.run([str(ROOT / "scripts" / "build-agent"), "--out", str(opts.binary.parent)], check=True,
                       stdout=sys.stderr)
    variants = {"onefile": str(opts.binary.resolve()), "venv": str(Path(sys.executable).parent / "cns-agent"),
                **extra_agents}
    base_env = dict(os.environ)
    result: dict = {"ok": True, "window_s": opts.window, "targets": {"rss_mb": TARGET_RSS_MB, "cpu_pct": TARGET_CPU_PCT},
                    "binary_bytes": opts.binary.stat().st_size,
                    "binary_mb": round(opts.binary.stat().st_size / 2**20, 1),
                    "start_s": {k: round(_start_s([v], opts.starts, base_env), 3) for k, v in variants.items()},
                    "cpus": os.cpu_count()}
    work = Path(tempfile.mkdtemp(prefix="cns-bench-agent-"))
    pcscd = start_pcscd(work / "pcscd")
    procs: list[subprocess.Popen] = []
    stack = contextlib.ExitStack()
    try:
        env = pcscd.env
        if opts.config:
            configs = {name: opts.config.resolve() for name in variants}
        elif opts.station == "enrolled":
            try:
                configs = _enroll_stations(work, variants, env, stack)
            except (RuntimeError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
                return {**result, "ok": False, "error": f"enrollment: {exc}"}
        else:
            configs = {}
        procs.append(subprocess.Popen(
            [str(Path(sys.executable).parent / "cns-emulator"), "serve", "--profile", PROFILE,
             "--vpcd", pcscd.vpcd_address(0), "--state", str(work / "card.json")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        agents: dict[str, tuple[subprocess.Popen, Path]] = {}
        for name, exe in variants.items():
            sock = work / name / "agent.sock"
            sock.parent.mkdir(mode=0o700)
            log = open(work / f"{name}.log", "wb")
            extra = ["--config", str(configs[name])] if name in configs else []
            p = subprocess.Popen([exe, "--log-level", "WARNING", "run", "--socket", str(sock), *extra], env=env,
                                 stdout=log, stderr=log, stdin=subprocess.DEVNULL)
            procs.append(p)
            agents[name] = (p, sock)
        deadline = time.monotonic() + 60
        for name, (p, sock) in agents.items():
            while not _sees_card(variants[name], sock, env):
                if p.poll() is not None or time.monotonic() > deadline:
                    return {**result, "ok": False,
                            "error": f"the {name} agent did not see 2 readers and the card: "
                                     f"{(work / f'{name}.log').read_text(errors='replace')[-500:]}"}
                time.sleep(0.3)
        time.sleep(1.0)                            # let the devices calls' work settle
        start = {n: _cpu_s(_tree(p.pid)) for n, (p, _) in agents.items()}
        peak = {n: 0.0 for n in agents}
        t0 = time.monotonic()
        while time.monotonic() - t0 < opts.window:
            for n, (p, _) in agents.items():
                peak[n] = max(peak[n], _rss_mb(_tree(p.pid)))
            time.sleep(min(1.0, max(0.0, opts.window - (time.monotonic() - t0))))
        elapsed = time.monotonic() - t0
        idle = {}
        for n, (p, _) in agents.items():
            cpu = (_cpu_s(_tree(p.pid)) - start[n]) / elapsed * 100
            idle[n] = {"rss_mb": round(peak[n], 1), "cpu_pct": round(cpu, 3), "processes": len(_tree(p.pid)),
                       "cryptography_mapped": _maps_cryptography(_tree(p.pid))}
        result["idle"] = idle
        one = idle["onefile"]
        result["meets_targets"] = one["rss_mb"] < TARGET_RSS_MB and one["cpu_pct"] < TARGET_CPU_PCT
        result["config"] = str(opts.config) if opts.config else None
        result["station"] = "config" if opts.config else opts.station
        station = (f"station configuration {opts.config.name}" if opts.config else
                   "each agent enrolled (station.toml, key, certificate) with a running personalizer"
                   if opts.station == "enrolled" else "no station configuration")
        result["note"] = (f"idle = 2 vpcd readers, 1 emulated card, {station}; RSS = process tree peak; "
                          "start = `cns-agent --version` median")
        return result
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        stack.close()
        pcscd.stop()
        import shutil
        shutil.rmtree(work, ignore_errors=True)
