"""The committed generated code in proto/cns/v1 matches the .proto files.

Runs ``scripts/gen_proto.py --check`` (which regenerates into a temporary
folder with the pinned grpcio-tools) and fails with its message when stale.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_generated_code_is_current():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_proto.py"), "--check"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr or proc.stdout


def test_generated_modules_import():
    from proto.cns.v1 import common_pb2, personalizer_pb2, personalizer_pb2_grpc

    assert personalizer_pb2.DESCRIPTOR.package == "cns.v1"
    assert "Personalizer" in personalizer_pb2.DESCRIPTOR.services_by_name
    assert hasattr(personalizer_pb2_grpc, "PersonalizerStub")
    assert common_pb2.Holder(codice_fiscale="X").codice_fiscale == "X"
