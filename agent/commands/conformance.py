"""``cns-agent conformance``: check the card in a reader against the tender (§5.2.1.2), through the agent.

    cns-agent conformance --reader R [--codes-file F | --codes-stdin | --codes-env] [--samples N]
                          [--json] [--report FILE.html]

The run happens in the running agent (it owns the readers and holds the device lock for the run;
the card's issuer challenges for key generation are answered by the personalizer, issue 12: an
unreachable personalizer stops the run before anything is written); progress is shown as it goes, then every check
with its clause: pass, fail (what was measured) or not run (why). The PIN is blocked on purpose
only on a BLANK test card and only when both its PIN and PUK are given (it is unblocked with the
PUK at once); on any other card the checks are non-destructive, and the report says which ran.

Codes: --codes-file F (TOML ``pin``, ``puk``; mode 0600), --codes-stdin (PIN then PUK, one a line),
--codes-env (CNS_PIN, CNS_PUK), or asked on a terminal (Enter skips one). Without a PIN the checks
that need it are reported as not run. Exit status: 0 conforming, 1 not conforming or stopped.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from agent.commands import CommandError, add_socket_option, ask_code, read_codes_file, socket_path

ENV = {"pin": "CNS_PIN", "puk": "CNS_PUK"}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("conformance", help="check the card in a reader against the tender (§5.2.1.2)",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reader", required=True, help="reader name, as `cns-agent devices` lists it")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--codes-file", type=Path, help="TOML file with pin and puk, mode 0600")
    g.add_argument("--codes-stdin", action="store_true", help="read the PIN then the PUK from standard input")
    g.add_argument("--codes-env", action="store_true", help="read CNS_PIN / CNS_PUK")
    p.add_argument("--samples", type=int, default=5, help="2048-bit signatures to time (median; the bound is checked before the run)")
    p.add_argument("--report", type=Path, metavar="FILE.html", help="also write a self-contained HTML report")
    p.add_argument("--json", action="store_true", help="JSON lines: progress, then the report")
    add_socket_option(p)
    p.set_defaults(func=conformance)


def _codes(args) -> tuple[str, str]:
    if args.codes_file:
        c = read_codes_file(args.codes_file, ("pin", "puk"))
    elif args.codes_stdin:
        lines = sys.stdin.read().split()
        c = {"pin": lines[0] if lines else "", "puk": lines[1] if len(lines) > 1 else ""}
    elif args.codes_env:
        c = {k: os.environ.get(v, "") for k, v in ENV.items()}
    elif sys.stdin.isatty():
        c = {"pin": ask_code("Card PIN (Enter: none, checks needing it are not run): "),
             "puk": ask_code("Card PUK (blank test cards only; Enter: none): ")}
    else:
        c = {"pin": "", "puk": ""}
    return c["pin"], c["puk"]


def report_dict(r) -> dict:
    return {"reader": r.reader, "card_serial": r.card_serial, "model_id": r.model_id, "mode": r.mode,
            "conforming": r.conforming, "seconds": r.seconds, "left_on_card": list(r.left_on_card),
            "checks": [{"id": c.id, "clause": c.clause, "requirement": c.requirement, "status": c.status,
                        "detail": c.detail, "figures": dict(c.figures)} for c in r.checks]}


def conformance(args: argparse.Namespace) -> int:
    from agent.api.client import AgentCallError, AgentClient, AgentUnavailableError
    from agent.conformance import report as rep
    from agent.conformance.checks import MAX_SAMPLES
    from proto.cns.v1 import agent_pb2 as pb

    if not 1 <= args.samples <= MAX_SAMPLES:
        raise CommandError(f"--samples must be 1..{MAX_SAMPLES}, got {args.samples}")
    if args.report is not None and not args.report.parent.resolve().is_dir():
        raise CommandError(f"--report {args.report}: folder {args.report.parent} does not exist; nothing was run")
    pin, puk = _codes(args)
    request = pb.ConformanceRequest(reader=args.reader, pin=pin, puk=puk, samples=args.samples)
    del pin, puk
    result = None
    try:
        with AgentClient(socket_path(args)) as client:
            for msg in client.conformance(request):
                if msg.HasField("report"):
                    result = report_dict(msg.report)
                elif args.json:
                    print(json.dumps({"step": msg.step, "message": msg.message}), flush=True)
                else:
                    print(f"  {msg.step:12} {msg.message}", flush=True)
    except (AgentUnavailableError, AgentCallError) as exc:
        if args.json:
            print(json.dumps({"error": {"message": str(exc)}}), flush=True)
        raise CommandError(str(exc)) from exc
    if result is None:
        raise CommandError("the agent ended the conformance run without a report")
    if args.report is not None:
        try:
            rep.write_html(args.report, result)
        except OSError as exc:
            raise CommandError(f"--report {args.report}: cannot write it ({exc.strerror}); the run itself "
                               "finished, see its result above") from None
    if args.json:
        print(json.dumps({"report": result}), flush=True)
    else:
        print("\n".join(rep.lines(result)))
        if args.report is not None:
            print(f"  report: {args.report}")
    return 0 if result["conforming"] else 1
