"""Regenerate the Python code in proto/ from the .proto files.

Usage: python scripts/gen_proto.py [--check] [--quiet]

The .proto files live in proto/cns/v1/ (package cns.v1) and are compiled with
the repository root as include path, so generated modules import each other as
``proto.cns.v1.<name>_pb2``. ``--check`` regenerates into a temporary folder
and exits 1 when the committed code is stale.
"""
from __future__ import annotations

import argparse
import filecmp
import pathlib
import shutil
import sys
import tempfile

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto" / "cns" / "v1"


def generate(out: pathlib.Path) -> list[pathlib.Path]:
    sources = sorted(PROTO_DIR.glob("*.proto"))
    if not sources:
        return []
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(s.relative_to(ROOT)) for s in sources],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("gen_proto: protoc failed (see the message above)")
    return sorted((out / "proto" / "cns" / "v1").glob("*_pb2*.py*"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if generated code is stale")
    ap.add_argument("--quiet", action="store_true")
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        produced = generate(pathlib.Path(tmp))
        stale = []
        for f in produced:
            target = PROTO_DIR / f.name
            if not target.exists() or not filecmp.cmp(f, target, shallow=False):
                stale.append(target.name)
                if not opts.check:
                    shutil.copyfile(f, target)
        wanted = {f.name for f in produced}
        extra = [p.name for p in PROTO_DIR.glob("*_pb2*.py*") if p.name not in wanted]
        if opts.check:
            if stale or extra:
                print(f"gen_proto: generated code is stale: {sorted(stale + extra)}; run scripts/gen_proto.py", file=sys.stderr)
                return 1
            return 0
        for name in extra:
            (PROTO_DIR / name).unlink()
        if not opts.quiet and stale:
            print(f"gen_proto: wrote {', '.join(stale)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
