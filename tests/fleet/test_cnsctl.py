"""``cnsctl fleet`` (issue 15 item 4) as central IT runs it: a subprocess against a fleet server with real
mTLS; --json output, the live rollout view as JSON lines, and mistakes refused in one line."""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

from agent.fleet import FleetAgent, Options
from personalizer.fleet.attestation import ModelRoots
from tests.fleet import support
from tests.fleet.test_rollouts import MODEL, inventory

CNSCTL = Path(sys.executable).with_name("cnsctl")
FAST = Options(initial_backoff=0.2, max_backoff=1.0, jitter=0.2, min_stream_seconds=0)
STATION = "urn:cns:station:RM:ST-0"


def admin_config(deployment, where: Path, port: int) -> Path:
    src = deployment.admin_config
    text = src.read_text()
    lines = [f'primary = "localhost:{port}"' if ln.startswith("primary") else ln for ln in text.splitlines()]
    lines = [f'trust_anchors = "{deployment.root / "tls" / "tls-ca.pem"}"' if ln.startswith("trust_anchors") else ln
             for ln in lines]
    lines = [f'client_certificate = "{src.parent / "client.pem"}"' if ln.startswith("client_certificate") else
             f'client_key = "{src.parent / "client.key.pem"}"' if ln.startswith("client_key") else ln for ln in lines]
    where.mkdir(parents=True, exist_ok=True)
    (where / "admin.toml").write_text("\n".join(lines) + "\n")
    return where / "admin.toml"


async def cnsctl(config: Path, *args: str) -> tuple[int, str, str]:
    p = await asyncio.create_subprocess_exec(str(CNSCTL), "--config", str(config), "fleet", *args,
                                             stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(p.communicate(), 60)
    return p.returncode, out.decode(), err.decode()


def test_inventory_commands_and_a_watched_rollout(deployment, tmp_path):
    ca = support.ModelCA(MODEL)

    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite", heartbeat_seconds=1, tick_seconds=0.2,
                                        model_roots=ModelRoots({MODEL: ca.cert})) as (port, fleet):
            cfg = support.station(deployment, tmp_path / "st0", port, sid="ST-0")
            agent = asyncio.create_task(FleetAgent(cfg, inventory(0), support.TokenExecutor(ca), version="3.1",
                                                   options=FAST).run())
            conf = admin_config(deployment, tmp_path / "admin", port)
            try:
                await support.until(lambda: fleet.hub.is_connected(STATION))
                rc, out, err = await cnsctl(conf, "stations", "--chamber", "RM", "--json")
                assert rc == 0, err
                got = json.loads(out)
                assert [(s["station"], s["agent_version"], s["connected"]) for s in got["fleet_stations"]] == [
                    (STATION, "3.1", True)]
                rc, out, err = await cnsctl(conf, "devices", "--model", MODEL, "--all", "--page-size", "1", "--json")
                assert rc == 0 and [d["serial"] for d in json.loads(out)["fleet_devices"]] == ["TK-0"], err
                rc, out, err = await cnsctl(conf, "send", "--station", STATION, "--kind", "refresh_inventory",
                                            "--json")
                assert rc == 0, err
                cid = json.loads(out)["command_id"]
                rc, out, err = await cnsctl(conf, "command", cid, "--json")
                assert rc == 0 and json.loads(out)["command_id"] == cid

                rc, out, err = await cnsctl(conf, "rollout", "create", "--name", "to r2", "--release", "r2",
                                            "--model", MODEL, "--rate", "1000", "--abort", "failed:50:1",
                                            "--window", "00:00-23:59", "--json")
                assert rc == 0, err
                rid = json.loads(out)["rollout_id"]
                rc, out, err = await cnsctl(conf, "rollout", "watch", rid, "--interval", "0.2", "--json")
                assert rc == 0, err
                lines = [json.loads(x) for x in out.splitlines()]
                assert lines[-1]["state"] == "completed" and lines[-1]["counts"] == {"succeeded": 1}
                assert all("progress" in x for x in lines[:-1]) and lines[:-1]
                rc, out, err = await cnsctl(conf, "rollout", "list", "--active", "--json")
                assert rc == 0 and json.loads(out)["rollouts"] == []
                rc, out, err = await cnsctl(conf, "rollout", "show", rid)   # the human view prints
                assert rc == 0 and "completed" in out
            finally:
                agent.cancel()
                await asyncio.gather(agent, return_exceptions=True)
    asyncio.run(go())


def test_mistakes_are_one_line_and_send_nothing(deployment, tmp_path):
    async def go():
        async with support.fleet_server(deployment, tmp_path / "db.sqlite") as (port, fleet):
            conf = admin_config(deployment, tmp_path / "admin", port)
            cases = [("stations", "--seen-before", "2026-13-45"),
                     ("send", "--station", "RM-ST-1", "--kind", "renew_due"),
                     ("rollout", "create", "--name", "x", "--release", "r", "--model", "m", "--abort", "failed:150:3"),
                     ("rollout", "create", "--name", "x", "--release", "r", "--model", "m", "--window", "25:00-01:00"),
                     ("rollout", "create", "--name", "x", "--release", "r", "--model", "m", "--rate", "-3")]
            for args in cases:
                rc, out, err = await cnsctl(conf, *args)
                assert rc == 2 and "error: argument" in err and "Traceback" not in err, (args, err)
            assert await fleet.store.audit_rows() == []   # nothing reached the server
            # the server's refusals: one line, no raw gRPC text
            rc, out, err = await cnsctl(conf, "send", "--station", "urn:cns:station:RM:NOPE", "--kind", "renew_due")
            assert rc == 1 and err.count("\n") == 1 and "has never connected" in err, err
            rc, out, err = await cnsctl(conf, "rollout", "create", "--name", "x", "--release", "r", "--model", "m")
            assert rc == 1 and "no device in the inventory matches" in err and "debug_error_string" not in err
            # a station's certificate is not central IT's
            st = support.station(deployment, tmp_path / "st", port, sid="ST-9")
            rc, out, err = await cnsctl(st.source, "stations")
            assert rc == 1 and "PERMISSION_DENIED" in err and "may not call /cns.v1.FleetAdmin/ListStations" in err
    asyncio.run(go())
