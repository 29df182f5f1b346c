"""The request-state vocabulary has one home (cns_spec.requests): the personalizer stores its names, the agent's
operations compare the cns.v1.RequestState numbers; both must be the proto's."""
from __future__ import annotations

from cns_spec import requests
from proto.cns.v1 import personalizer_pb2 as pb


def test_codes_are_the_proto_enums():
    for name in requests.NAMES:
        assert requests.CODES[name] == pb.RequestState.Value(f"REQUEST_STATE_{name}"), name
    assert set(pb.RequestState.keys()) == {"REQUEST_STATE_UNSPECIFIED"} | {f"REQUEST_STATE_{n}" for n in requests.NAMES}


def test_terminal_states_and_names_for_messages():
    assert set(requests.TERMINAL) == {"ISSUED", "DONE", "FAILED", "CANCELLED"}
    assert set(requests.TERMINAL_CODES) == {pb.REQUEST_STATE_ISSUED, pb.REQUEST_STATE_DONE, pb.REQUEST_STATE_FAILED,
                                            pb.REQUEST_STATE_CANCELLED}
    assert requests.name_of(pb.REQUEST_STATE_PENDING) == "pending"
    assert requests.name_of(0) == "unspecified"
    assert requests.name_of(99) == "99"


def test_agent_and_personalizer_use_it():
    from agent.ops import follow, lifecycle, personalize, renew
    from personalizer import store
    from personalizer.edge import service

    assert follow.TERMINAL == requests.TERMINAL_CODES
    assert (personalize.STATE_ISSUED, personalize.STATE_FAILED, personalize.STATE_CANCELLED) == (3, 4, 6)
    assert renew.STATE_CANCELLED == follow.STATE_FAILED + 2 == pb.REQUEST_STATE_CANCELLED
    assert (lifecycle.REQUEST_DONE, lifecycle.REQUEST_FAILED) == (pb.REQUEST_STATE_DONE, pb.REQUEST_STATE_FAILED)
    assert store.TERMINAL_STATES == requests.TERMINAL
    # the personalizer's gRPC edge maps every stored name to the enum number the agent expects
    for name in requests.NAMES:
        assert service.STATE_ENUMS[name] == requests.CODES[name]
