"""``cnsctl``: central IT's client of the personalizer (admin mTLS identity).

Commands (more come with the fleet issues)::

    cnsctl --config admin.toml ca-status
    cnsctl --config admin.toml request show REQUEST_ID

The config is a station configuration (station_config schema) with
``role = "admin"``. Output is human-readable, or one JSON object with --json.
Must not import agent or firmware_profiles.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import sys

import grpc

import station_config
from station_config import channel
from proto.cns.v1 import personalizer_pb2 as pb, personalizer_pb2_grpc as pb_grpc

EXIT_ERROR = 1


def _ts(value: int) -> str:
    return _dt.datetime.fromtimestamp(value, _dt.timezone.utc).isoformat() if value else "-"


def _ca_status(stub, opts, timeout) -> dict:
    r = stub.GetCAStatus(pb.GetCAStatusRequest(), timeout=timeout)
    return {"connector": r.connector, "operational": r.operational, "detail": r.detail,
            "profiles": [pb.CAProfile.Name(p) for p in r.profiles], "chain_certificates": len(r.chain_der),
            "issued_last_10_min": r.issued_last_10_min, "mean_issue_ms_last_10_min": round(r.mean_issue_ms_last_10_min, 1)}


def _request_show(stub, opts, timeout) -> dict:
    r = stub.GetRequest(pb.GetRequestRequest(request_id=opts.request_id), timeout=timeout)
    out = {"request_id": r.request_id, "state": pb.RequestState.Name(r.state),
           "profile": pb.CAProfile.Name(r.profile), "created_at": _ts(r.created_at), "updated_at": _ts(r.updated_at)}
    if r.HasField("certificate"):
        out["issuer"] = r.certificate.issuer_dn
        out["serial"] = r.certificate.serial_hex
    if r.HasField("error"):
        out["error"] = f"{r.error.code} {r.error.field}: {r.error.message}"
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="cnsctl", description="Central IT client of the CNS personalizer")
    ap.add_argument("--config", required=True, help="station configuration TOML with an admin identity")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--dr", action="store_true", help="talk to the disaster-recovery endpoint")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("ca-status", help="state of the CA").set_defaults(func=_ca_status)
    req = sub.add_parser("request", help="issuance requests")
    rsub = req.add_subparsers(dest="request_command", required=True)
    show = rsub.add_parser("show", help="show one request")
    show.add_argument("request_id")
    show.set_defaults(func=_request_show)
    return ap


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        cfg = station_config.load(opts.config)
        with channel.secure_channel_sync(cfg, dr=opts.dr) as ch:
            result = opts.func(pb_grpc.PersonalizerStub(ch), opts, cfg.personalizer.timeout_seconds)
    except station_config.StationConfigError as exc:
        print(f"cnsctl: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except grpc.RpcError as exc:
        print(f"cnsctl: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return EXIT_ERROR
    if opts.json:
        print(json.dumps(result, sort_keys=True))
    else:
        for k, v in result.items():
            print(f"{k:28} {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
