"""The CA profiles and the keyset → profile map have one home (cns_spec.profiles), used by the agent's operations,
its uplink and the personalizer's rules; every name has a cns.v1.CAProfile value on both gRPC edges."""
from __future__ import annotations

from cns_spec import profiles


def test_keysets_map_to_the_two_profiles_and_back():
    assert profiles.PROFILE_OF_KEYSET == {"CNS0": "cns-auth", "CNS1": "qualified-signature"}
    assert profiles.KEYSET_OF_PROFILE == {"cns-auth": "CNS0", "qualified-signature": "CNS1"}
    assert set(profiles.PROFILES) == set(profiles.PROFILE_OF_KEYSET.values())


def test_agent_and_personalizer_use_the_one_map():
    from agent.ops import personalize, renew
    from agent.uplink import client
    from personalizer.edge import service
    from personalizer.rules import validation
    from proto.cns.v1 import personalizer_pb2 as pb

    assert personalize.PROFILE_OF_KEYSET is renew.PROFILE_OF_KEYSET is profiles.PROFILE_OF_KEYSET
    assert validation.PROFILES == profiles.PROFILES
    # the two gRPC edges agree on the enum value of every profile name
    assert set(client.PROFILES) == set(profiles.PROFILES)
    assert {v: k for k, v in service.PROFILE_NAMES.items()} == client.PROFILES
    assert client.PROFILES[profiles.CNS_AUTH] == pb.CA_PROFILE_CNS_AUTH
