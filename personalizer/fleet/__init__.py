"""Fleet management (issue 15): the inventory of stations and devices, and commands sent to agents.

``store``    the ``FleetStore`` protocol and its SQLite implementation (tables in the daemon's database)
``hub``      the streams connected now: which station is reachable, and waking its writer
``service``  the gRPC edge of the fleet: ``Fleet`` (stations) and ``FleetAdmin`` (central IT)
"""
