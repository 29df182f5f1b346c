"""A two-site PostgreSQL 15 cluster under Patroni with one etcd member, on this machine, without systemd.

Run by ``scripts/cluster up [--sites]|down|status|kill|start`` and imported by the drill and tests/continuity.
Standard library only; imports nothing of ours, except that ``up --sites`` hands over to
``personalizer.continuity.sites`` (two personalizer sites on the database, one CA key in a token copied
to each), whose processes are recorded here so ``down`` stops them. Layout under the run folder (default ``./cluster-run``)::

    cluster.json          ports, user, the processes started (pid + kernel start time, so a reused pid
                          is never signalled)
    secrets.json          generated passwords (mode 0600; never printed)
    etcd/                 the etcd member's data       etcd.log
    site-a/ site-b/       patroni.yml (0600), data/ (PostgreSQL's), patroni.log, pgpass

Every process runs as an unprivileged system user (``postgres``, created by Debian's postgresql-common;
PostgreSQL refuses to run as root), in its own session so a kill reaches only what we started.

Timings are Patroni's tightest valid ones (REFERENCE.md §9): ``ttl`` 20 s, ``loop_wait`` 1 s,
``retry_timeout`` 3 s (``loop_wait + 2 × retry_timeout ≤ ttl``), ``primary_start_timeout`` 0 (a crashed
PostgreSQL under a live Patroni fails over at once), ``wal_retrieve_retry_interval`` 200 ms.

Synchronous policy: ``synchronous_mode: true`` with ``synchronous_mode_strict: false``. With both nodes up
every commit waits for the standby (RPO 0). When the standby is gone Patroni drops it from
``synchronous_standby_names`` after at most one loop and the primary keeps accepting (suspension and
revocation are 24x7, SLA4.1): commits never wait forever; until the standby is back the single copy is
the exposure, and ``status`` says so (``sync: degraded``). Patroni, not a static setting, owns
``synchronous_standby_names``, so a promoted clone never inherits a stale one (the pg_basebackup gotcha).
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
DEB_PACKAGES = ("postgresql-15", "patroni", "etcd-server", "etcd-client", "pgbackrest")
TOOLS = {"patroni": "patroni", "etcd": "etcd-server", "etcdctl": "etcd-client", "pgbackrest": "pgbackrest"}
SITES = ("site-a", "site-b")
DEFAULT_PORT_BASE = 25400
DEFAULT_USER = "postgres"
APP_DB = "cns"
APP_USER = "cns"
SCOPE = "cns"
UP_TIMEOUT_S = 120.0
STOP_GRACE_S = 20.0


class ClusterError(Exception):
    """A one-line, operator-facing reason (what is wrong and what to do)."""


@dataclass(frozen=True)
class Ports:
    base: int

    @property
    def etcd_client(self) -> int:
        return self.base

    @property
    def etcd_peer(self) -> int:
        return self.base + 1

    def pg(self, site: str) -> int:
        return self.base + 2 + SITES.index(site)

    def rest(self, site: str) -> int:
        return self.base + 4 + SITES.index(site)

    def all(self) -> list[int]:
        return list(range(self.base, self.base + 6))


def missing_tools() -> list[str]:
    """What is not installed, each with the Debian package that brings it."""
    missing = [f"{tool} (apt-get install {pkg})" for tool, pkg in TOOLS.items() if not shutil.which(tool)]
    if not (PG_BIN / "postgres").exists():
        missing.append(f"{PG_BIN / 'postgres'} (apt-get install postgresql-15)")
    return missing


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port_base(start: int = 26000, stop: int = 40000) -> int:
    """The first base port with six consecutive free ports on 127.0.0.1 (tests run beside other work),
    below the kernel's ephemeral range: a client socket may get a port there as its source, and connecting
    to such a port while nothing listens on it yet connects the socket to itself."""
    stop = min(stop, _ephemeral_low() - 6)
    for base in range(start, stop, 10):
        if all(_port_free(p) for p in range(base, base + 6)):
            return base
    raise ClusterError(f"no six free consecutive ports between {start} and {stop} (below the ephemeral range)")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (field 22 of /proc/PID/stat), None when no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] == "Z":   # a zombie is gone for our purposes
        return None
    return fields[19]


def _alive(proc: dict) -> bool:
    return proc.get("pid") is not None and _start_time(proc["pid"]) == proc.get("start")


class Cluster:
    """One run folder. ``Cluster(run_dir).up()`` is idempotent; ``down()`` stops everything it started."""

    def __init__(self, run_dir: Path | str, *, port_base: int | None = None, user: str = DEFAULT_USER):
        self.run_dir = Path(run_dir).resolve()
        self.state_path = self.run_dir / "cluster.json"
        state = self._load_state()
        self.user = state.get("user", user)
        self.ports = Ports(state.get("port_base", port_base or DEFAULT_PORT_BASE))
        self.procs: dict[str, dict] = state.get("procs", {})

    # ---- state -------------------------------------------------------------------------------------------
    def _load_state(self) -> dict:
        try:
            return json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ClusterError(f"{self.state_path} is unreadable ({exc}): remove the run folder and run up again")

    def _save_state(self) -> None:
        data = {"user": self.user, "port_base": self.ports.base, "procs": self.procs}
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.state_path)

    def secrets(self) -> dict:
        path = self.run_dir / "secrets.json"
        if not path.exists():
            values = {k: secrets.token_urlsafe(18) for k in ("superuser", "replication", "rewind", "app")}
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(values, f)
        return json.loads(path.read_text())

    # ---- identity ----------------------------------------------------------------------------------------
    def _account(self) -> pwd.struct_passwd | None:
        """The system user processes run as; None when we are not root (then they run as us)."""
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(self.user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", self.user],
                           check=True)
            return pwd.getpwnam(self.user)

    def _check_reachable(self, account: pwd.struct_passwd | None) -> None:
        if account is None:
            return
        for parent in self.run_dir.parents:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                raise ClusterError(f"{parent} is not searchable by the user {self.user!r} that runs PostgreSQL: "
                                   f"choose a run folder outside it (--dir)")

    # ---- configuration -----------------------------------------------------------------------------------
    def dsn(self, *, user: str = APP_USER, database: str = APP_DB, password: str | None = None,
            connect_timeout: int = 2) -> str:
        """libpq DSN listing both sites; ``target_session_attrs=read-write`` finds the current primary."""
        pw = password if password is not None else self.secrets()["app" if user == APP_USER else "superuser"]
        ports = ",".join(str(self.ports.pg(s)) for s in SITES)
        return (f"host=127.0.0.1,127.0.0.1 port={ports} dbname={database} user={user} password={pw} "
                f"target_session_attrs=read-write connect_timeout={connect_timeout}")

    def _patroni_yaml(self, site: str) -> str:
        s = self.secrets()
        d = self.run_dir / site
        params = {
            "wal_log_hints": "on", "wal_retrieve_retry_interval": "200ms", "max_connections": 60,
            "shared_buffers": "32MB", "max_wal_senders": 10, "max_replication_slots": 10,
            "unix_socket_directories": str(d), "wal_keep_size": "128MB",
            "archive_mode": "on",   # WAL to pgBackRest's repository (personalizer.continuity.pitr)
        }
        config = {
            "scope": SCOPE, "namespace": "/cns/", "name": site,
            "restapi": {"listen": f"127.0.0.1:{self.ports.rest(site)}",
                        "connect_address": f"127.0.0.1:{self.ports.rest(site)}"},
            "etcd3": {"hosts": [f"127.0.0.1:{self.ports.etcd_client}"]},
            "bootstrap": {
                "dcs": {
                    "ttl": 20, "loop_wait": 1, "retry_timeout": 3, "maximum_lag_on_failover": 1048576,
                    "primary_start_timeout": 0, "synchronous_mode": True, "synchronous_mode_strict": False,
                    "postgresql": {"use_pg_rewind": True, "use_slots": True, "parameters": params},
                },
                "initdb": [{"encoding": "UTF8"}, "data-checksums", {"auth": "scram-sha-256"}],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{self.ports.pg(site)}",
                "connect_address": f"127.0.0.1:{self.ports.pg(site)}",
                "data_dir": str(d / "data"), "bin_dir": str(PG_BIN), "pgpass": str(d / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": s["superuser"]},
                    "replication": {"username": "replicator", "password": s["replication"]},
                    "rewind": {"username": "rewinder", "password": s["rewind"]},
                },
                "parameters": {"unix_socket_directories": str(d),
                               "archive_command": f"pgbackrest --config={d / 'pgbackrest.conf'} --stanza={SCOPE} "
                                                  f"archive-push %p"},
                "pg_hba": [
                    "local all all scram-sha-256",
                    "host replication replicator 127.0.0.1/32 scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256",
                ],
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }
        return json.dumps(config, indent=1)   # JSON is YAML: no YAML writer needed

    # ---- processes ---------------------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str], log: Path, account: pwd.struct_passwd | None,
               env: dict | None = None) -> None:
        if name in self.procs and _alive(self.procs[name]):
            return
        with open(log, "ab") as out:
            kwargs = {}
            if account is not None:
                kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    cwd=str(self.run_dir), start_new_session=True,
                                    env={**_base_env(account), **(env or {})}, **kwargs)
        start = None
        for _ in range(50):
            start = _start_time(proc.pid)
            if start:
                break
            time.sleep(0.01)
        self.procs[name] = {"pid": proc.pid, "start": start, "argv": argv[0]}
        self._save_state()

    def _chown(self, path: Path, account: pwd.struct_passwd | None) -> None:
        if account is not None:
            os.chown(path, account.pw_uid, account.pw_gid)

    def up(self, *, timeout: float = UP_TIMEOUT_S, log=print) -> dict:
        missing = missing_tools()
        if missing:
            raise ClusterError("missing: " + "; ".join(missing))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        account = self._account()
        self._check_reachable(account)
        os.chmod(self.run_dir, 0o755)
        if not self.state_path.exists():
            busy = [p for p in self.ports.all() if not _port_free(p)]
            if busy:
                raise ClusterError(f"ports {busy} are in use: choose another --port-base")
        self.secrets()
        self._save_state()
        etcd_dir = self.run_dir / "etcd"
        etcd_dir.mkdir(mode=0o700, exist_ok=True)
        self._chown(etcd_dir, account)
        p = self.ports
        self._spawn("etcd", [
            shutil.which("etcd"), "--name", "cns-etcd", "--data-dir", str(etcd_dir),
            "--listen-client-urls", f"http://127.0.0.1:{p.etcd_client}",
            "--advertise-client-urls", f"http://127.0.0.1:{p.etcd_client}",
            "--listen-peer-urls", f"http://127.0.0.1:{p.etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{p.etcd_peer}",
            "--initial-cluster", f"cns-etcd=http://127.0.0.1:{p.etcd_peer}",
            "--initial-cluster-state", "new", "--initial-cluster-token", f"cns-{p.base}",
        ], self.run_dir / "etcd.log", account)
        _wait(lambda: _http_ok(f"http://127.0.0.1:{p.etcd_client}/health"), 30, "etcd to answer")
        for site in SITES:
            self.start(site, account=account)
            if site == SITES[0]:   # the first node bootstraps alone, so site-a starts as the primary
                _wait(lambda: (self.cluster_json() or {}).get("leader") == SITES[0], timeout,
                      "site-a to bootstrap and lead", self._log_tail)
        _wait(self.synchronous, timeout, "the synchronous standby", self._log_tail)
        self._ensure_app_database()
        return self.status()

    def start(self, site: str, *, account: pwd.struct_passwd | None = None) -> None:
        """Start (or restart after a kill) one site's Patroni; it rejoins as standby (pg_rewind or clone)."""
        if site not in SITES:
            raise ClusterError(f"unknown site {site!r}: expected one of {', '.join(SITES)}")
        account = account if account is not None else self._account()
        d = self.run_dir / site
        d.mkdir(mode=0o700, exist_ok=True)
        self._chown(d, account)
        cfg = d / "patroni.yml"
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._patroni_yaml(site))
        self._chown(cfg, account)
        self.write_pgbackrest_conf(site, account)
        self._spawn(f"patroni-{site}", [shutil.which("patroni"), str(cfg)], d / "patroni.log", account)

    def write_pgbackrest_conf(self, site: str, account: pwd.struct_passwd | None = None) -> Path:
        """pgBackRest's configuration for one node: the shared repository under the run folder."""
        account = account if account is not None else self._account()
        d, repo = self.run_dir / site, self.run_dir / "backups"
        for folder in (repo, d / "pgbackrest"):
            folder.mkdir(mode=0o700, exist_ok=True)
            self._chown(folder, account)
        conf = d / "pgbackrest.conf"
        conf.write_text(f"[global]\nrepo1-path={repo}\nrepo1-retention-full=2\nlog-path={d / 'pgbackrest'}\n"
                        f"lock-path={d / 'pgbackrest'}\nspool-path={d / 'pgbackrest'}\nstart-fast=y\n"
                        f"log-level-console=warn\nlog-level-file=info\n\n[{SCOPE}]\npg1-path={d / 'data'}\n"
                        f"pg1-port={self.ports.pg(site)}\npg1-socket-path={d}\npg1-user=postgres\n")
        self._chown(conf, account)
        return conf

    def _ensure_app_database(self) -> None:
        s = self.secrets()
        sql = (f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_USER}') THEN "
               f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{s['app']}'; END IF; END $$;")
        self.psql(sql, database="postgres")
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{APP_DB}'", database="postgres")
        if exists.strip() != "1":
            self.psql(f"CREATE DATABASE {APP_DB} OWNER {APP_USER}", database="postgres")

    def psql(self, sql: str, *, database: str = APP_DB, timeout: float = 30) -> str:
        """Run one statement as the superuser on the current primary; returns psql's unaligned output."""
        env = {**os.environ, "PGPASSWORD": self.secrets()["superuser"], "PGCONNECT_TIMEOUT": "2"}
        ports = ",".join(str(self.ports.pg(s)) for s in SITES)
        conninfo = (f"host=127.0.0.1,127.0.0.1 port={ports} dbname={database} user=postgres "
                    f"target_session_attrs=read-write")
        r = subprocess.run([str(PG_BIN / "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", conninfo, "-c", sql],
                           capture_output=True, text=True, env=env, timeout=timeout)
        if r.returncode != 0:
            raise ClusterError(f"psql failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
        return r.stdout

    # ---- inspection --------------------------------------------------------------------------------------
    def cluster_json(self) -> dict | None:
        """Patroni's /cluster view from whichever node answers, plus ``leader``; None when none answers."""
        for site in SITES:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.ports.rest(site)}/cluster", timeout=1) as r:
                    data = json.loads(r.read())
            except (OSError, ValueError, http.client.HTTPException):   # not (yet) a Patroni answering
                continue
            leaders = [m["name"] for m in data.get("members", []) if m.get("role") == "leader"
                       and m.get("state") == "running"]
            data["leader"] = leaders[0] if leaders else None
            return data
        return None

    def synchronous(self) -> bool:
        """True when Patroni names a sync standby and the leader's replication to it is synchronous."""
        view = self.cluster_json() or {}
        named = any(m.get("role") == "sync_standby" for m in view.get("members", []))
        return bool(view.get("leader")) and named and self.sync_state() == "sync"

    def sync_state(self) -> str | None:
        """``sync`` when the leader's pg_stat_replication has a synchronous standby streaming, else what it has."""
        try:
            out = self.psql("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming' "
                            "ORDER BY sync_state DESC", database="postgres", timeout=5)
        except (ClusterError, subprocess.TimeoutExpired):
            return None
        states = out.split()
        return "sync" if "sync" in states else (states[0] if states else "none")

    def status(self) -> dict:
        view = self.cluster_json()
        procs = {name: _alive(p) for name, p in self.procs.items()}
        if view is None:
            return {"leader": None, "sync": None, "members": [], "processes": procs}
        sync = self.sync_state() if view.get("leader") else None
        members = [{k: m.get(k) for k in ("name", "role", "state", "timeline", "lag", "port")}
                   for m in view.get("members", [])]
        return {"leader": view.get("leader"), "sync": sync if sync == "sync" else f"degraded ({sync})",
                "members": members, "processes": procs}

    def _log_tail(self) -> str:
        lines = []
        for site in SITES:
            log = self.run_dir / site / "patroni.log"
            if log.exists():
                tail = log.read_text(errors="replace").strip().splitlines()[-3:]
                lines += [f"{site}: {t}" for t in tail]
        return "\n".join(lines)

    # ---- faults and stop ---------------------------------------------------------------------------------
    def postmaster(self, site: str) -> dict | None:
        """The site's running postmaster (from postmaster.pid), or None."""
        try:
            pid = int((self.run_dir / site / "data" / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        start = _start_time(pid)
        return {"pid": pid, "start": start} if start else None

    def kill(self, site: str, what: str = "site") -> list[int]:
        """SIGKILL a site whole (``site``: Patroni and PostgreSQL), or only ``postgres`` or ``patroni``."""
        if site not in SITES:
            raise ClusterError(f"unknown site {site!r}: expected one of {', '.join(SITES)}")
        targets = []
        if what in ("site", "patroni"):
            p = self.procs.get(f"patroni-{site}")
            if p and _alive(p):
                targets.append(p)
        if what in ("site", "postgres"):
            pm = self.postmaster(site)
            if pm:
                targets.append(pm)
        if what not in ("site", "postgres", "patroni"):
            raise ClusterError(f"unknown target {what!r}: expected site, postgres or patroni")
        killed = []
        for t in targets:
            try:
                os.killpg(t["pid"], signal.SIGKILL) if what == "site" else os.kill(t["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(t["pid"])
        if what == "site":   # postgres was started by patroni in its session: its backends too
            pm = self.postmaster(site)
            if pm:
                os.kill(pm["pid"], signal.SIGKILL)
        return killed

    def down(self, *, purge: bool = False) -> None:
        """Stop every process we started (TERM, then KILL after a grace period); ``purge`` removes the folder
        (its data is discarded, so the processes are killed at once rather than shut down cleanly). The
        personalizer sites (``up --sites``) stop first, while their database is still there."""
        for name in [n for n in self.procs if n.startswith("personalizer-")]:
            self._stop(self.procs.pop(name), grace=0 if purge else STOP_GRACE_S)
        if purge:
            for site in SITES:
                self.kill(site)
            self._stop(self.procs.get("etcd"), grace=0)
            self.procs = {}
            shutil.rmtree(self.run_dir, ignore_errors=True)
            return
        for site in SITES:
            self._stop(self.procs.get(f"patroni-{site}"))
        for site in SITES:   # a Patroni killed earlier leaves its postmaster: stop it fast and clean
            pm = self.postmaster(site)
            if pm:
                os.kill(pm["pid"], signal.SIGQUIT)
                self._stop(pm, grace=5)
        self._stop(self.procs.get("etcd"))
        self.procs = {}
        if self.state_path.exists():
            self._save_state()
        if purge:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    @staticmethod
    def _stop(proc: dict | None, grace: float = STOP_GRACE_S) -> None:
        if not proc or not _alive(proc):
            return
        try:
            os.kill(proc["pid"], signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _alive(proc):
            time.sleep(0.1)
        if _alive(proc):
            try:
                os.killpg(proc["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            time.sleep(0.2)


def _base_env(account: pwd.struct_passwd | None) -> dict:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
    if account is not None:
        env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    return env


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status == 200
    except (OSError, urllib.error.URLError, http.client.HTTPException):
        return False


def _wait(pred, timeout: float, what: str, detail=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except ClusterError:
            pass
        time.sleep(0.25)
    extra = f"; last log lines:\n{detail()}" if detail else ""
    raise ClusterError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")


def _print_status(st: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(st))
        return
    print(f"leader: {st['leader'] or 'none'}")
    print(f"sync: {st['sync'] or 'unknown'}")
    for m in st["members"]:
        print(f"  {m['name']}: {m['role']} {m['state']} timeline={m.get('timeline')} lag={m.get('lag', 0)} "
              f"port={m.get('port')}")
    down = [n for n, alive in st["processes"].items() if not alive]
    if down:
        print(f"not running: {', '.join(down)}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/cluster", description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="cluster-run", help="run folder (default ./cluster-run)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="start etcd and both sites; waits for a leader and a synchronous standby")
    up.add_argument("--sites", action="store_true",
                    help="also two personalizer sites on the database (primary a, DR b), one CA key in a SoftHSM2 "
                         "token copied to each (personalizer.continuity.sites)")
    up.add_argument("--port-base", type=int, default=DEFAULT_PORT_BASE,
                    help=f"six consecutive ports from here (default {DEFAULT_PORT_BASE})")
    st = sub.add_parser("status", help="who leads, the synchronous state, each member")
    st.add_argument("--json", action="store_true")
    dn = sub.add_parser("down", help="stop every process started here")
    dn.add_argument("--purge", action="store_true", help="also remove the run folder")
    k = sub.add_parser("kill", help="SIGKILL a site (fault injection for the drill)")
    k.add_argument("site", choices=SITES)
    k.add_argument("--what", choices=("site", "postgres", "patroni"), default="site")
    s = sub.add_parser("start", help="start a site again (it rejoins as standby)")
    s.add_argument("site", choices=SITES)
    sub.add_parser("dsn", help="print the application's DSN (contains its password)")
    args = ap.parse_args(argv)
    try:
        c = Cluster(args.dir, port_base=getattr(args, "port_base", None))
        if args.cmd == "up":
            _print_status(c.up(), False)
            if args.sites:   # the one place this module reaches ours: the personalizer sites
                from personalizer.continuity import sites
                try:
                    info = sites.up(c)
                except (sites.SitesError, OSError) as exc:
                    raise ClusterError(f"sites: {exc}") from None
                for name, s in info["sites"].items():
                    print(f"personalizer site {name}: {s['grpc']}  CRL/OCSP {s['crl_ocsp']}  CA token copy {s['token']}")
                print(f"station config with both endpoints: {info['station_config']}")
                print(f"cnsctl config with both endpoints: {info['admin_config']}")
        elif args.cmd == "status":
            _print_status(c.status(), args.json)
        elif args.cmd == "down":
            c.down(purge=args.purge)
            print("cluster: stopped")
        elif args.cmd == "kill":
            print(f"killed: {c.kill(args.site, args.what)}")
        elif args.cmd == "start":
            c.start(args.site)
            print(f"started {args.site}")
        elif args.cmd == "dsn":
            print(c.dsn())
    except ClusterError as exc:
        print(f"cluster: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cluster: interrupted; run `scripts/cluster down` to stop what was started", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
