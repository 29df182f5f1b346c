"""The station config's ``[updates]`` section (url, proxy) and ``cns-agent update --config`` reading it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import station_config

EXAMPLES = Path(station_config.__file__).parent / "examples"


def _with(tmp_path, extra: str) -> Path:
    shutil.copytree(EXAMPLES, tmp_path / "cfg")
    cfg = tmp_path / "cfg" / "station.toml"
    cfg.write_text(cfg.read_text() + "\n" + extra)
    return cfg


def test_updates_section_is_read(tmp_path):
    cfg = station_config.load(_with(tmp_path, '[updates]\nurl = "https://releases.cns.example.it/cns"\n'
                                              'proxy = "http://proxy.example.it:3128"\n'))
    assert cfg.updates == station_config.UpdatesSection("https://releases.cns.example.it/cns",
                                                        "http://proxy.example.it:3128")
    assert station_config.load(EXAMPLES / "station.toml").updates is None


@pytest.mark.parametrize("extra, key", [('[updates]\nurl = "ftp://x"\n', "updates.url"),
                                        ('[updates]\nproxy = "http://p:1"\n', "updates.url"),
                                        ('[updates]\nurl = "http://x"\nproxy = "socks5://p"\n', "updates.proxy"),
                                        ('[updates]\nurl = "http://x"\nmirror = "http://y"\n', "updates.mirror")])
def test_a_bad_updates_section_names_the_key(tmp_path, extra, key):
    with pytest.raises(station_config.StationConfigError) as exc:
        station_config.load(_with(tmp_path, extra))
    assert exc.value.key == key


def test_update_check_uses_the_configs_url_and_proxy(served, make_release, tmp_path):
    from tests.releases.netfaults import FaultyProxy
    from tests.releases.test_update_cli import agent
    make_release("1.0.0", {"firmware": ("2.1", b"fw")})
    proxy = FaultyProxy()
    try:
        cfg = _with(tmp_path, f'[updates]\nurl = "{served.url}"\nproxy = "{proxy.url}"\n')
        (tmp_path / "root.json").write_bytes(served.first_root())
        assert agent("update", "trust", str(tmp_path / "root.json"), env_home=tmp_path)[0] == 0
        rc, out, err = agent("update", "check", "--config", str(cfg), "--model", "tok1", env_home=tmp_path)
        assert rc == 0, err
        assert "release 1.0.0" in out and "firmware=2.1" in out
        assert any("/metadata/timestamp.json" in line for line in proxy.seen)
    finally:
        proxy.close()
