"""The workstation agent (``cns-agent``): readers, cards, local API, operations.

Sub-packages: ``card`` (APDU transport and card sessions, no I/O of its own),
``devices`` (PC/SC readers and cards through pyscard), ``api`` (the local gRPC
service on a per-user Unix socket), ``commands`` (the CLI command groups),
``ops`` and ``uplink`` (operations and the central link).
May import ``proto``, ``firmware_profiles`` (models only, never the emulator)
and ``station_config``; never ``personalizer``.
"""
