"""Device operations: journaled, resumable, undoable.

Every multi-step device operation is a plan run by ONE step engine over the journal:

    engine        Step, Plan, decide(plan, journal state) (pure), Engine (run, resume, undo)
    journal       the SQLite (WAL) operation journal: a step is recorded before it runs
    personalize   build_plan + Personalizer (blank card → personalized)
    renew         build_plan + Renewer (spare slots, one atomic switch, old certificates revoked)
    pin           build_plan + PinManager (PIN change, unblock with the PUK)
    cardlink      the card link and encodings personalize and renew share
    station       StationOps: per-device locks, the uplink per operation, recovery on insert
    lifecycle     certificate status/suspend/reactivate/revoke (not journaled: the personalizer's outbox is)

An operation never runs its own loop over the journal: it builds its plan (step names as
journaled, forward and undo actions, flags: ``submits``, ``needs_codes``,
``point_of_no_return``) and hands it to ``Engine``. Imports ``agent.card``, ``cns_spec``;
the uplink is passed in (``station`` alone builds one); never grpc or proto.
"""
