"""The workstation agent (``cns-agent``): readers, cards, local API, operations.

``app`` is the composition root: ``Agent.build(cfg, *, backends, uplink)``
assembles the agent from its seams and runs its named, supervised tasks (local
API, one monitor per device backend, ``recovery`` on insert, the station
certificate's renewal). Sub-packages: ``card`` (APDU transport and card
sessions, no I/O of its own), ``devices`` (the ``DeviceBackend`` seam; PC/SC
readers and cards through pyscard), ``api`` (the local gRPC service on a
per-user Unix socket), ``commands`` (the CLI command groups), ``ops``
(journaled operations; they receive an ``agent.ops.uplink.Uplink`` and device
links, never build them) and ``uplink`` (the gRPC uplink to the personalizer).
May import ``proto``, ``firmware_profiles`` (models only, never the emulator)
and ``station_config``; never ``personalizer``.
"""
