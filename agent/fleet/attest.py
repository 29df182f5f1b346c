"""The attestation of an installed token release, as the agent relays it from the device.

``attestation(command, serial=, model=, release=, sign=, device_certificate=)`` builds the
``FleetInstalledManifest`` for this command (its id binds the statement to the command: no replay),
has the device sign it (``sign(manifest_bytes) -> signature``: ECDSA P-256 / SHA-256 by the device's
own key, reached through the device's transport) and returns the serialized ``FleetAttestation`` to
put in the command's result. The personalizer verifies it against the model's attestation CA.

For now the emulated tokens' device keys are TEST keys the test side holds (tests/fleet/support.py
issues them under a TEST model CA) and signs with; a real token signs inside the device.
Imports proto only.
"""
from __future__ import annotations

import time
from typing import Callable

from proto.cns.v1 import fleet_pb2 as pb


def attestation(command: pb.FleetCommand, *, serial: str, model: str, release: str,
                sign: Callable[[bytes], bytes], device_certificate: bytes) -> bytes:
    manifest = pb.FleetInstalledManifest(command_id=command.command_id, device_serial=serial, model=model,
                                         release=release, installed_at=int(time.time())).SerializeToString()
    return pb.FleetAttestation(manifest=manifest, signature=sign(manifest),
                               device_certificate=device_certificate).SerializeToString()
