"""PostgreSQL for ``--store postgresql`` benchmarks: the Patroni cluster with its synchronous standby.

``cluster()`` brings up ``personalizer.continuity.cluster`` (etcd + Patroni + PostgreSQL 15 primary and
synchronous standby, the deployment of issue 17) in a folder under /tmp its unprivileged user can reach,
and stops every process and removes the folder at the end. ``use_postgresql(config, c, name)`` writes a
copy of a daemon config whose ``[store]`` is ``backend = "postgresql"`` on a fresh schema of that cluster
(the request store and the embedded CA's index both go there), the password in a 0600 file.
``duplicates(c, schema)`` counts certificates issued twice for one request in that schema;
``connect(c, schema)`` opens an autocommit session whose search path is that schema (a benchmark's reads).
"""
from __future__ import annotations

import itertools
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from personalizer.continuity.cluster import SITES, Cluster, free_port_base, missing_tools

_schemas = itertools.count(1)


@contextmanager
def cluster():
    missing = missing_tools()
    if missing:
        raise SystemExit("bench --store postgresql needs: " + "; ".join(missing))
    run_dir = tempfile.mkdtemp(prefix="cns-bench-pg-")
    os.chmod(run_dir, 0o755)
    c = Cluster(run_dir, port_base=free_port_base(start=31000))
    try:
        c.up(timeout=120)
        yield c
    finally:
        c.down(purge=True)


def sync_state(c: Cluster) -> str:
    """Patroni's view of the standby at measuring time (``sync`` is what the figures need)."""
    return str(c.sync_state())


def use_postgresql(config: Path, c: Cluster, name: str) -> tuple[Path, str]:
    """(config copy on a fresh schema, the schema)."""
    import psycopg

    schema = f"bench_{name}_{os.getpid()}_{next(_schemas)}"
    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    pw = config.parent / f"pg-password-{name}"
    pw.write_text(c.secrets()["app"] + "\n")
    pw.chmod(0o600)
    ports = ",".join(str(c.ports.pg(s)) for s in SITES)
    store = (f'[store]\ndata_dir = "data-{name}"\nsynchronous = "FULL"\nbackend = "postgresql"\n'
             f'dsn = "host=127.0.0.1,127.0.0.1 port={ports} dbname=cns user=cns target_session_attrs=read-write '
             f"connect_timeout=2 options='-csearch_path={schema}'\"\npassword_file = \"{pw.name}\"\n")
    text, n = re.subn(r"\[store\]\n(?:[^\[\n].*\n)*", store + "\n", config.read_text())
    if n != 1:
        raise SystemExit(f"bench: {config} has no [store] section to point at PostgreSQL")
    out = config.with_name(f"{config.stem}-{name}.toml")
    out.write_text(text)
    return out, schema


def connect(c: Cluster, schema: str):
    import psycopg

    return psycopg.connect(c.dsn(), autocommit=True, options=f"-csearch_path={schema}")


def database_counters(c: Cluster) -> dict[str, float]:
    """The application database's committed/rolled-back transactions (pg_stat_database: a backend reports
    its counts when it goes idle or exits, so read them after the sessions measured have closed) and the
    primary's WAL position in bytes (pg_current_wal_lsn)."""
    import psycopg

    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        row = conn.execute("SELECT xact_commit + xact_rollback, pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0') "
                           "FROM pg_stat_database WHERE datname = current_database()").fetchone()
    return {"transactions": float(row[0]), "wal_bytes": float(row[1])}


def duplicates(c: Cluster, schema: str) -> int:
    import psycopg

    with psycopg.connect(c.dsn(), autocommit=True) as conn:
        return int(conn.execute(f"SELECT COALESCE(SUM(n - 1), 0) FROM (SELECT count(*) n FROM {schema}.ca_certificates "
                                "GROUP BY request_id) d").fetchone()[0])


def _proc_cpu(pid: int) -> tuple[float, int, str] | None:
    """(user + system CPU seconds, parent pid, process title) of one process, from /proc."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            title = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[1]), title


def postgres_cpu(c: Cluster) -> dict[str, float]:
    """CPU seconds so far of each node's PostgreSQL processes, by role: ``primary_backends`` (the sessions
    of the daemon), ``walsender``, ``walreceiver``, ``startup`` (the standby's WAL replay), ``primary_other``
    / ``standby_other`` (postmaster, checkpointer, WAL writer, archiver...). Live processes only: compare two
    readings taken while the same pool connections exist (a backend that exits takes its CPU with it)."""
    leader = (c.cluster_json() or {}).get("leader")
    out: dict[str, float] = {}
    pms = {site: (c.postmaster(site) or {}).get("pid") for site in SITES}
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = _proc_cpu(int(entry))
            if info:
                children.setdefault(info[1], []).append(int(entry))
    for site, pm in pms.items():
        if not pm:
            continue
        node = "primary" if site == leader else "standby"
        for pid in [pm] + children.get(pm, []):
            info = _proc_cpu(pid)
            if not info:
                continue
            title = info[2]
            role = next((r for r in ("walsender", "walreceiver", "startup") if r in title), None)
            if role is None:
                role = f"{node}_backends" if (node == "primary" and "cns cns" in title) else f"{node}_other"
            out[role] = out.get(role, 0.0) + info[0]
    return out


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {k: after.get(k, 0.0) - before.get(k, 0.0) for k in sorted(set(before) | set(after))}
