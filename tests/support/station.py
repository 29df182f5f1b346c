"""Station configurations for agents under test: the deployment's file plus the settings a test needs.

``with_settings(path, renewal={...}, operations={...})`` writes a copy of the station config next to
``path`` (relative paths in it keep resolving) with those sections added, and returns the copy's path.
Tests set the agent's knobs this way, through the schema the operator uses (station_config), never
through environment variables.
"""
from __future__ import annotations

from pathlib import Path


def with_settings(path: Path, name: str = "station-test.toml", **sections: dict) -> Path:
    lines = [Path(path).read_text().rstrip(), ""]
    for section, values in sections.items():
        if f"[{section}]" in lines[0]:
            raise ValueError(f"{path} already has a [{section}] section")
        lines.append(f"[{section}]")
        lines += [f"{key} = {value!r}" for key, value in values.items()]
        lines.append("")
    out = Path(path).with_name(name)
    out.write_text("\n".join(lines))
    return out
