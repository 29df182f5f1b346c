"""Continuity tooling (issue 17): the local HA cluster controller and the store backup.

``cluster``: brings up, inspects, kills and stops an etcd member and two Patroni-managed
PostgreSQL 15 nodes ("site-a", "site-b") on this machine, without systemd (``scripts/cluster``).
``backup``: the online backup and restore of a SQLite request store (``cns-personalizer backup``).
Neither imports grpc, proto, the broker or the edge.
"""
