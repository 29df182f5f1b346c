"""The layer rules of DESIGN.md, as the import-linter contracts in pyproject.toml, hold for this tree.

``lint-imports`` (import-linter, a dev extra) checks direct and indirect imports,
including imports inside functions. The second half proves the check can fail:
the same contracts, run on a copy of our packages with one deliberately
violating module added, must report that contract broken.

``cns_spec`` (issue 11 item 4) is in the contracts; on a tree that does not
have the package yet its root package and contract are left out of the run
(import-linter refuses a missing root package) and a warning says so.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts_config() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]


def _present(package: str, tree: Path) -> bool:
    return (tree / package / "__init__.py").is_file()


def _for_tree(cfg: dict, tree: Path) -> dict:
    """The contracts restricted to the root packages the tree has (only ``cns_spec`` may be missing)."""
    missing = [p for p in cfg["root_packages"] if not _present(p, tree)]
    assert missing in ([], ["cns_spec"]), f"root packages missing from {tree}: {missing}"
    if not missing:
        return cfg
    warnings.warn("cns_spec is not in this tree yet: its contract is not checked", stacklevel=2)
    out = dict(cfg, root_packages=[p for p in cfg["root_packages"] if p != "cns_spec"], contracts=[])
    for c in cfg["contracts"]:
        if "cns_spec" in c.get("source_modules", []) or "cns_spec" in c.get("modules", []):
            continue
        c = dict(c)
        if "forbidden_modules" in c:
            c["forbidden_modules"] = [m for m in c["forbidden_modules"] if m != "cns_spec"]
        out["contracts"].append(c)
    return out


def _toml(cfg: dict) -> str:
    """[tool.importlinter] back to TOML (its values are strings, booleans and lists of strings)."""
    def value(v):
        return json.dumps(v)  # a JSON string, bool or list of strings is valid TOML
    lines = ["[tool.importlinter]"]
    lines += [f"{k} = {value(v)}" for k, v in cfg.items() if k != "contracts"]
    for c in cfg["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"] + [f"{k} = {value(v)}" for k, v in c.items()]
    return "\n".join(lines) + "\n"


def _lint(tree: Path, config: Path) -> subprocess.CompletedProcess:
    assert LINT_IMPORTS.exists(), f"{LINT_IMPORTS} is missing: install the dev extra (pip install -e '.[dev]')"
    return subprocess.run([str(LINT_IMPORTS), str(config), "--no-cache"], cwd=tree,
                          capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_every_layer_contract(tmp_path):
    cfg = _for_tree(_contracts_config(), ROOT)
    config = tmp_path / "importlinter.toml"
    config.write_text(_toml(cfg))
    r = _lint(ROOT, config)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"Contracts: {len(cfg['contracts'])} kept, 0 broken." in r.stdout, r.stdout


def test_the_contracts_state_the_design_boundaries():
    by_name = {c["name"]: c for c in _contracts_config()["contracts"]}
    assert {c["type"] for c in by_name.values()} == {"independence", "forbidden"}
    [independence] = [c for c in by_name.values() if c["type"] == "independence"]
    assert set(independence["modules"]) == {"agent", "personalizer"}
    sources = {m for c in by_name.values() for m in c.get("source_modules", [])}
    assert {"firmware_profiles", "station_config", "proto", "cns_spec", "agent.card", "agent.ops"} <= sources
    assert "cns_spec" in _contracts_config()["root_packages"]


# One violation per boundary: (module to add, its source, the contract that must break).
VIOLATIONS = [
    ("agent/card/_violation.py", "import smartcard.System\n", "agent.card speaks APDUs only"),
    ("agent/card/_violation.py", "def later():\n    import grpc\n", "agent.card speaks APDUs only"),
    ("agent/ops/_violation.py", "import grpc\n", "agent.ops never imports grpc"),
    ("agent/ops/_violation.py", "from agent.api import client\n", "agent.ops never imports grpc"),
    ("agent/_violation.py", "from personalizer import errors\n", "agent and personalizer never import each other"),
    ("personalizer/_violation.py", "import agent.card\n", "agent and personalizer never import each other"),
    ("agent/devices/_violation.py", "from firmware_profiles.emulator import EmulatedCard\n",
     "never imports the emulator"),
    ("firmware_profiles/_violation.py", "import station_config\n", "firmware_profiles imports nothing of ours"),
    ("station_config/_violation.py", "import agent\n", "station_config imports nothing of ours"),
    ("proto/_violation.py", "import personalizer\n", "proto imports nothing of ours"),
    ("personalizer/ca/_violation.py", "import grpc\n", "CA and PKI never import grpc"),
    ("personalizer/reports/_violation.py", "from proto.cns.v1 import admin_pb2\n", "nor do its reports"),
    ("personalizer/edge/_violation.py", "from personalizer.store import SqliteRequestStore\n",
     "edge reaches data through the broker"),
    ("personalizer/edge/_violation.py", "def later():\n    from personalizer.store import memory\n",
     "edge reaches data through the broker"),
    ("personalizer/fleet/_violation.py", "import grpc\n", "only the gRPC edge imports grpc or proto"),
    ("personalizer/releases/_violation.py", "from proto.cns.v1 import fleet_pb2\n",
     "only the gRPC edge imports grpc or proto"),
]


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory):
    """Our packages (sources only) copied to a temp dir, so a violating module can be added."""
    tree = tmp_path_factory.mktemp("layers")
    for pkg in _contracts_config()["root_packages"]:
        if _present(pkg, ROOT):
            shutil.copytree(ROOT / pkg, tree / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.toml", "*.md"))
    return tree


@pytest.mark.parametrize("path,source,contract", VIOLATIONS, ids=[f"{v[0]}:{v[1].split()[1]}" for v in VIOLATIONS])
def test_a_violating_module_breaks_its_contract(tree_copy, tmp_path, path, source, contract):
    module = tree_copy / path
    config = tmp_path / "importlinter.toml"
    config.write_text(_toml(_for_tree(_contracts_config(), tree_copy)))
    module.write_text(source)
    try:
        r = _lint(tree_copy, config)
    finally:
        module.unlink()
    assert r.returncode != 0, r.stdout
    broken = r.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and path[:-3].replace("/", ".") in broken, r.stdout
    summary = r.stdout.split("Contracts:", 1)[0]
    verdict = re.search(r"\b(KEPT|BROKEN)\b", summary[summary.index(contract):])
    assert verdict and verdict.group(1) == "BROKEN", r.stdout
