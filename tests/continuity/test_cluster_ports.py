"""The cluster controller's port choice and its Patroni REST reads, without a cluster.

A drill run failed at ``cluster up`` with ``http.client.BadStatusLine: GET /cluster HTTP/1.1``: the port base
was in Linux's ephemeral range (32768-60999), Patroni was not listening yet, and the REST read's own socket
got that same port as its source, connecting to itself (TCP simultaneous open) and reading back its request.
"""
from __future__ import annotations

import socket
import threading

import pytest

from personalizer.continuity.cluster import Cluster, ClusterError, free_port_base


def _ephemeral_range() -> tuple[int, int]:
    lo, hi = open("/proc/sys/net/ipv4/ip_local_port_range").read().split()
    return int(lo), int(hi)


def test_port_base_is_below_the_ephemeral_range():
    lo, _ = _ephemeral_range()
    assert free_port_base() + 5 < lo
    assert free_port_base(start=lo - 200) + 5 < lo   # even when asked to start near it
    with pytest.raises(ClusterError, match="below the ephemeral"):
        free_port_base(start=lo + 100)                 # never inside it


def test_a_rest_port_that_answers_garbage_reads_as_no_answer(tmp_path):
    """Not a crash of `up`/`status`: the node is not answering yet."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]

    def echo():
        for _ in range(4):
            conn, _ = srv.accept()
            with conn:
                conn.sendall(conn.recv(4096))   # what a self-connected socket reads: its own request

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    c = Cluster(tmp_path / "run", port_base=port - 4)   # rest(site-a) = base + 4
    assert c.ports.rest("site-a") == port
    try:
        assert c.cluster_json() is None
    finally:
        srv.close()
