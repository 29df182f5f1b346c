"""station_config: examples load, init's configs load, every error names file, key and problem."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import station_config
from station_config import channel

EXAMPLES = Path(station_config.__file__).parent / "examples"


@pytest.mark.parametrize("name", ["station.toml", "admin.toml"])
def test_examples_load(name):
    cfg = station_config.load(EXAMPLES / name)
    assert cfg.personalizer.client_key.exists()
    assert channel.channel_options(cfg)


def test_example_proxy_and_dr():
    cfg = station_config.load(EXAMPLES / "station.toml")
    assert cfg.endpoints() == ("personalizer.cns.camcom.example.it:443", "personalizer-dr.cns.camcom.example.it:443")
    assert ("grpc.http_proxy", "http://proxy.rm.camcom.example.it:3128") in channel.channel_options(cfg)
    assert channel.target(cfg, dr=True).startswith("personalizer-dr.")
    assert cfg.renewal.window_days == 90
    assert (cfg.operations.watch_timeout_seconds, cfg.operations.recovery_retry_seconds) == (600.0, 30.0)


def test_init_station_config_drives_a_channel(deployment, daemon):
    """The agent's path: station_config.load + channel.secure_channel_sync against the live daemon."""
    from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc

    live = deployment.station_config.with_name("station-live.toml")
    live.write_text(deployment.station_config.read_text().replace(':0"', f':{daemon.port}"'))
    cfg = station_config.load(live)
    assert (cfg.station.id, cfg.station.chamber_code, cfg.station.role) == ("RM-STATION-01", "RM", "station")
    with channel.secure_channel_sync(cfg) as ch:
        status = pb_grpc.PersonalizerStub(ch).GetCAStatus(pb.GetCAStatusRequest(), timeout=cfg.personalizer.timeout_seconds)
    assert status.operational


@pytest.fixture
def workdir(tmp_path):
    shutil.copytree(EXAMPLES, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _write(workdir: Path, old: str, new: str) -> Path:
    p = workdir / "station.toml"
    text = p.read_text()
    assert old in text, old
    p.write_text(text.replace(old, new))
    return p


ERRORS = [
    ('primary = "personalizer.cns.camcom.example.it:443"', 'primary = "personalizer"', "personalizer.primary", "expected HOST:PORT"),
    ('id = "RM-SPORTELLO-03"\n', '', "station.id", "missing"),
    ('chamber_code = "RM"', 'chamber_code = "roma"', "station.chamber_code", "upper-case letters"),
    ('role = "station"', 'role = "superuser"', "station.role", "expected one of station, operator-tool, admin"),
    ('timeout_seconds = 30', 'timeout_seconds = "30"', "personalizer.timeout_seconds", "expected float"),
    ('timeout_seconds = 30', 'timeout_seconds = -1', "personalizer.timeout_seconds", "positive"),
    ('keepalive_seconds = 20', 'keepalive_secs = 20', "personalizer.keepalive_secs", "unknown key"),
    ('client_key = "pki/station.key.pem"', 'client_key = "pki/missing.pem"', "personalizer.client_key", "file not found"),
    ('trust_anchors = "pki/tls-ca.pem"', 'trust_anchors = "station.toml"', "personalizer.trust_anchors", "not a PEM file"),
    ('dr = "personalizer-dr.cns.camcom.example.it:443"', 'dr = "personalizer.cns.camcom.example.it:443"', "personalizer.dr", "must differ"),
    ('url = "http://proxy.rm.camcom.example.it:3128"', 'url = "socks5://proxy:1080"', "proxy.url", "http://HOST"),
    ('[proxy]', '[proxies]', "proxies", "unknown section"),
    ('primary = "personalizer.cns.camcom.example.it:443"', 'primary = "host:70000"', "personalizer.primary", "port out of range"),
    ('window_days = 90', 'window_days = 0', "renewal.window_days", "1 to 3650 days"),
    ('window_days = 90', 'window_days = 36500', "renewal.window_days", "1 to 3650 days"),
    ('watch_timeout_seconds = 600', 'watch_timeout_seconds = 0', "operations.watch_timeout_seconds", "positive"),
    ('recovery_retry_seconds = 30', 'recovery_retry_seconds = "soon"', "operations.recovery_retry_seconds",
     "expected float"),
    ('recovery_retry_seconds = 30', 'recovery_retry_s = 30', "operations.recovery_retry_s", "unknown key"),
    ('window_days = 90', 'window_days = "90"', "renewal.window_days", "expected int"),
    ('data_dir = "/var/lib/cns-agent"', 'data_dir = "/var/lib/cns-agent"\nsocket_dir = "/run/cns-agent"',
     "station.socket_dir", "no longer read"),
]


@pytest.mark.parametrize("old,new,key,message", ERRORS, ids=[e[2] + ":" + e[3] for e in ERRORS])
def test_errors_name_file_key_and_problem(workdir, old, new, key, message):
    p = _write(workdir, old, new)
    with pytest.raises(station_config.StationConfigError) as ei:
        station_config.load(p)
    assert ei.value.key == key
    assert message in ei.value.message
    assert str(p) in str(ei.value)


def test_missing_section_and_bad_toml(workdir):
    p = workdir / "station.toml"
    p.write_text("[station]\nid = \"x\"\nchamber_code = \"RM\"\ndata_dir = \"d\"\n")
    with pytest.raises(station_config.StationConfigError) as ei:
        station_config.load(p)
    assert ei.value.key == "personalizer" and "missing section" in ei.value.message
    p.write_text("[station\n")
    with pytest.raises(station_config.StationConfigError, match="not valid TOML"):
        station_config.load(p)
    with pytest.raises(station_config.StationConfigError, match="file not found"):
        station_config.load(workdir / "nope.toml")


def test_config_is_frozen():
    cfg = station_config.load(EXAMPLES / "station.toml")
    with pytest.raises(AttributeError):
        cfg.station.id = "other"


def test_station_config_imports_nothing_of_ours():
    import ast
    for py in Path(station_config.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for n in names:
                    assert not n.split(".")[0] in ("personalizer", "agent", "firmware_profiles", "proto"), (py, n)
