"""Fleet management (issue 15): the inventory of stations and devices, and commands sent to agents.

``store``    the ``FleetStore`` protocol and its SQL implementation (tables in the daemon's database:
             SQLite, or the PostgreSQL database of the request store)
``db``       the connection both engines are reached through (one SQL text)
``hub``      the streams connected now: which station is reachable, and waking its writer
``notify``   several daemons over one PostgreSQL store: LISTEN/NOTIFY wake-ups, the one rollout stepper
``rollouts`` rollouts that halt themselves; ``rollout_rules`` their pure decisions; ``attestation``

Its gRPC side lives in the edge (``personalizer.edge.fleet_service``: ``Fleet`` for stations and
``FleetAdmin`` for central IT; ``personalizer.edge.fleet_wiring``: the one function the daemon calls
to put the fleet on its server). This package imports no grpc or proto (an import contract says so),
but ``attestation``, whose signed manifest is a protobuf message.
"""
