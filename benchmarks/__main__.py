"""Dispatch ``python -m benchmarks NAME [ARGS]`` to ``benchmarks/<name>.py``."""
from __future__ import annotations

import importlib
import json
import pkgutil
import sys

import benchmarks


def _names() -> dict[str, str]:
    out = {}
    for info in pkgutil.iter_modules(benchmarks.__path__):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"benchmarks.{info.name}")
        out[info.name.replace("_", "-")] = (mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else ""
    return out


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "--list"):
        for name, doc in sorted(_names().items()):
            print(f"{name:16} {doc}")
        return 0
    name, rest = argv[0], argv[1:]
    try:
        mod = importlib.import_module(f"benchmarks.{name.replace('-', '_')}")
    except ModuleNotFoundError:
        print(f"bench: no benchmark named {name!r}; scripts/bench --list names them", file=sys.stderr)
        return 2
    result = mod.main(rest)
    print(json.dumps(result, sort_keys=True))
    return 0 if result.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
