"""The personalizer's gRPC edge: servicers, client identities and roles, request bounds, proto conversion.

Everything that speaks gRPC or protobuf lives here (and in ``personalizer.server``, which assembles the daemon).
Servicers turn messages into broker calls and our exceptions into status codes (``service.ERROR_CODES``); they
reach the data only through the broker (``personalizer.outbox.broker``), never the request store directly.
The fleet's servicers (``fleet_service``, put on the server by ``fleet_wiring``) work on the fleet's own store
and rollout engine (``personalizer.fleet``).
"""
