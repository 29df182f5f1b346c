"""cns_spec is pure: it imports nothing of ours and does no I/O (DESIGN: agent and personalizer share only
``proto`` and ``cns_spec``). Checked without import-linter: by its source and by what importing it loads."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SPEC = Path(__file__).resolve().parents[2] / "cns_spec"
OURS = ("agent", "personalizer", "proto", "firmware_profiles", "station_config", "tests", "benchmarks", "scripts")
NO_IO = ("socket", "subprocess", "sqlite3", "grpc", "os", "shutil", "pathlib", "tomllib", "io")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_sources_import_only_the_standard_library_and_cns_spec():
    sources = sorted(SPEC.rglob("*.py"))
    assert len(sources) >= 4
    for src in sources:
        found = _imports(src)
        assert not found & set(OURS), (src, found & set(OURS))
        assert not found & set(NO_IO), (src, found & set(NO_IO))
        third_party = {n for n in found - {"cns_spec", "__future__"} if n not in sys.stdlib_module_names}
        assert not third_party, (src, third_party)
        assert "open(" not in src.read_text(), src


def test_importing_it_loads_nothing_of_ours():
    code = ("import sys, cns_spec.dati_personali, cns_spec.codice_fiscale, cns_spec.holder, cns_spec.text, cns_spec.reasons, cns_spec.profiles, cns_spec.validity, cns_spec.requests;"
            f"bad = [m for m in sys.modules if m.split('.')[0] in {OURS!r}];"
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
