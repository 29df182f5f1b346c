"""``cnsctl release`` as central IT runs it (issue 14 item 2): init, add, sign with a threshold, publish, list, bad input."""
from __future__ import annotations

import json
import shutil

import pytest

from personalizer import cnsctl
from tests.releases.conftest import image, write_release


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cnsctl.main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def repo(tmp_path, capsys):
    rc, out, err = run(capsys, "release", "init", "--repo", str(tmp_path / "r"), "--offline-keys", str(tmp_path / "off"),
                       "--online-keys", str(tmp_path / "on"), "--targets-keys", "2", "--targets-threshold", "2")
    assert rc == 0, err
    # the two targets keys belong to two people: each keeps one on their own medium
    (tmp_path / "off2").mkdir()
    shutil.move(str(tmp_path / "off" / "targets-2.pem"), tmp_path / "off2" / "targets-2.pem")
    return tmp_path


def test_a_release_needs_both_targets_signatures_before_it_is_published(repo, capsys):
    spec = write_release(repo / "in", "tok1", "1.0.0", {"firmware": ("2.1", image(5000)), "cdrom": ("3.0", image(7000, 1))},
                         constraints=[("cdrom>=3", "firmware>=2.1")])
    r = str(repo / "r")
    assert run(capsys, "release", "add", "--repo", r, str(spec))[0] == 0
    rc, out, _ = run(capsys, "--json", "release", "sign", "--repo", r, "--keys", str(repo / "off"))
    assert rc == 0 and json.loads(out)["signatures"]["targets"].startswith("1/2")
    rc, _, err = run(capsys, "release", "publish", "--repo", r, "--online-keys", str(repo / "on"))
    assert rc == 1 and "not signed by enough keys" in err and err.count("\n") == 1
    rc, out, _ = run(capsys, "release", "list", "--repo", r, "--json")
    assert [x["state"] for x in json.loads(out)["releases"]] == ["staged"]
    assert run(capsys, "release", "sign", "--repo", r, "--keys", str(repo / "off2"))[0] == 0
    rc, out, err = run(capsys, "release", "publish", "--repo", r, "--online-keys", str(repo / "on"), "--json")
    assert rc == 0, err
    assert json.loads(out)["published"] == {"targets": 2, "snapshot": 2, "timestamp": 2}
    rc, out, _ = run(capsys, "release", "list", "--repo", r, "--json")
    [row] = json.loads(out)["releases"]
    assert (row["state"], row["model"], row["version"]) == ("published", "tok1", "1.0.0")


def test_an_agent_build_is_a_target_too(repo, capsys, tmp_path):
    binary = tmp_path / "cns-agent"
    binary.write_bytes(b"#!/bin/sh\necho cns-agent 0.2.0\n")
    r = str(repo / "r")
    assert run(capsys, "release", "add", "--repo", r, "--agent", str(binary), "--agent-version", "0.2.0")[0] == 0
    rc, out, _ = run(capsys, "release", "list", "--repo", r, "--json")
    [row] = json.loads(out)["releases"]
    assert (row["kind"], row["platform"], row["version"]) == ("agent", "linux-x86_64", "0.2.0")


@pytest.mark.parametrize("parts, constraints, expected", [
    ({"firmware": ("2.0", b"x"), "cdrom": ("3.1", b"y")}, [("cdrom>=3", "firmware>=2.1")],
     "the release itself does not meet cdrom>=3"),
    ({"bios": ("1.0", b"x")}, [], "components.bios: not one of firmware, cdrom, disk"),
    ({"firmware": ("two", b"x")}, [], "'two' is not a version"),
    ({"firmware": ("2.1", b"x")}, [("cdrom>=3", "firmware=>2.1")], "expected COMPONENT OP VERSION"),
])
def test_a_bad_release_file_is_one_line_and_nothing_is_staged(repo, capsys, parts, constraints, expected):
    spec = write_release(repo / "bad", "tok1", "1.0.0", parts, constraints)
    rc, _, err = run(capsys, "release", "add", "--repo", str(repo / "r"), str(spec))
    assert rc == 1 and expected in err and err.count("\n") == 1 and str(spec) in err
    assert not (repo / "r" / "staged" / "targets.json").exists()


def test_a_missing_image_and_a_repeated_version_are_refused(repo, capsys):
    r = str(repo / "r")
    spec = write_release(repo / "in", "tok1", "1.0.0", {"firmware": ("2.1", b"fw")})
    (repo / "in" / "firmware-2.1.img").unlink()
    rc, _, err = run(capsys, "release", "add", "--repo", r, str(spec))
    assert rc == 1 and "firmware-2.1.img: no such file" in err
    spec = write_release(repo / "in", "tok1", "1.0.0", {"firmware": ("2.1", b"fw")})
    assert run(capsys, "release", "add", "--repo", r, str(spec))[0] == 0
    spec2 = write_release(repo / "in2", "tok1", "1.0.1", {"firmware": ("2.1", b"other bytes")})
    rc, _, err = run(capsys, "release", "add", "--repo", r, str(spec2))
    assert rc == 1 and "already in the repository with other content; give it a new version" in err


def test_release_commands_need_no_personalizer_config_but_others_still_do(repo, capsys):
    assert run(capsys, "release", "list", "--repo", str(repo / "r"))[0] == 0
    with pytest.raises(SystemExit) as exc:
        cnsctl.main(["queue", "list"])
    assert exc.value.code == 2 and "--config is required" in capsys.readouterr().err
    rc, _, err = run(capsys, "release", "list", "--repo", str(repo / "nowhere"))
    assert rc == 1 and "not a release repository; create one with 'cnsctl release init'" in err


def test_each_release_renews_the_targets_expiry_and_list_shows_every_expiry(tmp_path, capsys):
    import datetime as dt
    from personalizer.releases.repository import ReleaseRepo
    repo = ReleaseRepo.init(tmp_path / "r", tmp_path / "off", tmp_path / "on", expiry_days={"targets": 30})
    first = dt.datetime.fromisoformat(repo.expiries()["targets"])
    repo.expiry_days["targets"] = 60                   # later: the policy allows longer, or simply time has passed
    repo.add_token_release(write_release(tmp_path / "in", "tok1", "1.0.0", {"firmware": ("2.1", b"fw")}))
    repo.sign(tmp_path / "off")
    repo.publish(tmp_path / "on")
    assert dt.datetime.fromisoformat(repo.expiries()["targets"]) - first >= dt.timedelta(days=29)
    rc, out, _ = run(capsys, "release", "list", "--repo", str(tmp_path / "r"), "--json")
    assert rc == 0 and set(json.loads(out)["expires"]) == {"root", "targets", "snapshot", "timestamp"}
