"""``cnsctl`` as central IT types it: every mistake is one line that says what to fix, never a traceback."""
from __future__ import annotations

import json

from personalizer import deploy
from tests.cli.conftest import one_line_error, run, run_into_closed_pipe, with_endpoint


def _admin(deployment, daemon, tmp_path, **replace):
    return with_endpoint(deployment.admin_config, daemon.port, deployment.admin_config.parent / f"live-{tmp_path.name}.toml",
                         **replace)


def test_json_before_or_after_the_command(deployment, daemon, tmp_path):
    cfg = str(_admin(deployment, daemon, tmp_path))
    before = run("cnsctl", "--config", cfg, "--json", "queue", "list")
    after = run("cnsctl", "--config", cfg, "queue", "list", "--json")
    assert before.returncode == after.returncode == 0, (before.stderr, after.stderr)
    assert json.loads(before.stdout)["count"] == json.loads(after.stdout)["count"]
    assert "connector" in json.loads(run("cnsctl", "--config", cfg, "ca-status", "--json").stdout)


def test_wrong_trust_anchor_says_the_server_certificate_is_not_trusted(deployment, daemon, tmp_path):
    other = deploy.init_deployment(tmp_path / "other", ca_key_bits=2048)
    cfg = _admin(deployment, daemon, tmp_path, **{r'trust_anchors = ".*"': f'trust_anchors = "{other.tls_ca}"'})
    r = run("cnsctl", "--config", str(cfg), "ca-status")
    assert r.returncode == 1
    err = one_line_error(r)
    assert "not trusted" in err and str(other.tls_ca) in err and "trust_anchors" in err
    assert "::1" not in err and "refused" not in err.lower()


def test_nothing_listening_names_the_endpoint(deployment, tmp_path):
    cfg = with_endpoint(deployment.admin_config, 1, deployment.admin_config.parent / f"closed-{tmp_path.name}.toml")
    r = run("cnsctl", "--config", str(cfg), "ca-status")
    assert r.returncode == 1
    err = one_line_error(r)
    assert "nothing answers" in err and ":1 " in err and "personalizer.primary" in err


def test_dr_without_a_dr_endpoint(deployment, daemon, tmp_path):
    r = run("cnsctl", "--config", str(_admin(deployment, daemon, tmp_path)), "--dr", "ca-status")
    assert r.returncode == 2
    assert "personalizer.dr" in one_line_error(r)


def test_negative_limit_and_bad_dates(deployment, daemon, tmp_path):
    cfg = str(_admin(deployment, daemon, tmp_path))
    r = run("cnsctl", "--config", cfg, "queue", "list", "--limit", "-5")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "at least 1, got -5" in r.stderr
    for start in ("tomorrow", "2026-13-40T20:00:00+01:00"):
        r = run("cnsctl", "--config", cfg, "maintenance", "add", "--start", start, "--end", "2026-12-05T21:00:00+01:00")
        assert r.returncode == 2
        err = one_line_error(r)
        assert start in err and "e.g. 2026-12-05T20:00:00+01:00" in err
    r = run("cnsctl", "--config", cfg, "maintenance", "list", "--json")
    assert r.returncode == 0 and not [w for w in json.loads(r.stdout)["windows"] if "2026-12-05" in w["starts_at"]]


def test_refused_role_is_one_line(deployment, daemon, tmp_path):
    station = with_endpoint(deployment.station_config, daemon.port,
                            deployment.station_config.parent / f"live-{tmp_path.name}.toml")
    r = run("cnsctl", "--config", str(station), "queue", "list")
    assert r.returncode == 1
    assert "PERMISSION_DENIED" in one_line_error(r)


def test_closed_pipe_exits_quietly(deployment, daemon, tmp_path):
    cfg = str(_admin(deployment, daemon, tmp_path))
    for args in (("ca-status",), ("--json", "ca-status")):
        r = run_into_closed_pipe("cnsctl", "--config", cfg, *args)
        assert r.stderr == "" and r.returncode == 0, r.stderr


def test_text_output_is_lines_not_python_reprs(deployment, daemon, tmp_path):
    cfg = str(_admin(deployment, daemon, tmp_path))
    import datetime as dt
    start = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)).replace(microsecond=0)
    add = run("cnsctl", "--config", cfg, "maintenance", "add", "--start", start.isoformat(),
              "--end", (start + dt.timedelta(hours=2)).isoformat(), "--reason", "cli test")
    assert add.returncode == 0, add.stderr
    for args in (("maintenance", "list"), ("ca-status",)):
        r = run("cnsctl", "--config", cfg, *args)
        assert r.returncode == 0, r.stderr
        assert "{" not in r.stdout and "[" not in r.stdout and "'" not in r.stdout, r.stdout
    assert "reason=cli test" in run("cnsctl", "--config", cfg, "maintenance", "list").stdout
