"""The stock ledger as central IT keeps it (``cnsctl stock``, issue 19 item 4): against the real
daemon over mTLS; bad input is one line and records nothing; only admins may write it."""
from __future__ import annotations

import json

from tests.cli.conftest import one_line_error, run, with_endpoint
from tests.personalizer.conftest import daemon  # noqa: F401  (session fixture over this package's deployment)


def _cfg(deployment, daemon, tmp_path, which="admin_config"):
    src = getattr(deployment, which)
    return str(with_endpoint(src, daemon.port, src.parent / f"live-{tmp_path.name}.toml"))


def test_add_and_list_stock(deployment, daemon, tmp_path):
    cfg = _cfg(deployment, daemon, tmp_path)
    r = run("cnsctl", "--config", cfg, "stock", "add", "--chamber", "rm", "--quantity", "25", "--note", "DDT 118",
            "--json")
    assert r.returncode == 0, r.stderr
    added = json.loads(r.stdout)
    assert (added["chamber"], added["quantity"], added["note"]) == ("RM", 25, "DDT 118")
    assert added["by"].startswith("urn:cns:admin:")
    assert run("cnsctl", "--config", cfg, "stock", "add", "--chamber", "RM", "--quantity", "-5").returncode == 0
    assert run("cnsctl", "--config", cfg, "stock", "add", "--chamber", "MI", "--quantity", "7", "--model",
               "alpha").returncode == 0
    listed = json.loads(run("cnsctl", "--config", cfg, "stock", "list", "--chamber", "RM", "--json").stdout)
    assert listed["balances"] == [{"chamber": "RM", "model": "any", "sent": 20, "used": 0, "left": 20}]
    assert [e["quantity"] for e in listed["entries"]][-2:] == [25, -5]
    every = json.loads(run("cnsctl", "--config", cfg, "stock", "list", "--json").stdout)
    assert {"chamber": "MI", "model": "alpha", "sent": 7, "used": 0, "left": 7} in every["balances"]
    text = run("cnsctl", "--config", cfg, "stock", "list")
    assert text.returncode == 0 and "chamber=RM" in text.stdout and "left=20" in text.stdout


def test_bad_stock_input_is_one_line_and_records_nothing(deployment, daemon, tmp_path):
    cfg = _cfg(deployment, daemon, tmp_path)
    before = json.loads(run("cnsctl", "--config", cfg, "stock", "list", "--json").stdout)["entries"]
    r = run("cnsctl", "--config", cfg, "stock", "add", "--chamber", "RM", "--quantity", "0")
    assert r.returncode == 2 and "must not be 0" in one_line_error(r)
    r = run("cnsctl", "--config", cfg, "stock", "add", "--chamber", "R M!", "--quantity", "3")
    assert r.returncode == 1 and "not a chamber code" in one_line_error(r)
    r = run("cnsctl", "--config", cfg, "stock", "add", "--chamber", "RM", "--quantity", "100001")
    assert r.returncode == 1 and "at most 100000" in one_line_error(r)
    r = run("cnsctl", "--config", cfg, "stock", "add", "--chamber", "RM", "--quantity", "ten")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert json.loads(run("cnsctl", "--config", cfg, "stock", "list", "--json").stdout)["entries"] == before


def test_a_station_cannot_touch_the_ledger(deployment, daemon, tmp_path):
    cfg = _cfg(deployment, daemon, tmp_path, "station_config")
    r = run("cnsctl", "--config", cfg, "stock", "add", "--chamber", "RM", "--quantity", "3")
    assert r.returncode == 1 and "PERMISSION_DENIED" in one_line_error(r)
