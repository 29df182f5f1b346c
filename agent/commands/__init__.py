"""CLI command groups of ``cns-agent``; each module has ``register(subparsers)``.

Commands translate our library errors into ``CommandError`` (one clear line for
the user); ``agent.cli`` prints it. Socket options are shared via ``add_socket_option``.
Codes (PIN, PUK) are read by one set of helpers: ``read_codes_file`` (TOML, 0600),
``ask_code`` (a terminal prompt; a new code is asked twice),
``ask_personalization_codes`` (the prompts of ``personalize``) and
``check_new_codes`` (a new PIN equal to the PUK is refused). They never print a code.
"""
from __future__ import annotations

import argparse
from pathlib import Path


class CommandError(Exception):
    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def add_socket_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--socket", type=Path, default=None,
                        help="the agent's Unix socket (default: $XDG_RUNTIME_DIR/cns-agent/agent.sock)")


def socket_path(args: argparse.Namespace) -> Path:
    from agent.api.rundir import default_socket_path
    return args.socket or default_socket_path()


def read_codes_file(path: Path, keys: tuple[str, ...]) -> dict[str, str]:
    """The codes ``keys`` from a TOML file that only its owner may read (missing keys are "")."""
    import tomllib

    try:
        if path.stat().st_mode & 0o077:
            raise CommandError(f"{path}: holds PINs, so it must be readable by its owner only (chmod 600)")
        table = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise CommandError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CommandError(f"{path}: not a readable TOML file ({type(exc).__name__})") from None
    return {k: str(table.get(k, "")) for k in keys}


def ask_code(prompt: str, *, new: bool = False) -> str:
    """Ask on the terminal without echo; a ``new`` code is asked twice and must match."""
    import getpass

    code = getpass.getpass(prompt)
    label = prompt.strip().rstrip(":").split(" (")[0]          # "New PIN (8 digits): " -> "New PIN"
    if new and getpass.getpass(f"{label} again: ") != code:
        raise CommandError(f"the two {label[0].lower() + label[1:]}s differ; nothing was changed")
    return code


def check_new_codes(*, new_pin: str, puk: str) -> None:
    """Refuse a new PIN that equals the PUK (whoever learns one would hold both)."""
    if new_pin and puk and new_pin == puk:
        raise CommandError("the new PIN equals the PUK: choose a different PIN; nothing was changed")


def ask_personalization_codes() -> tuple[str, str]:
    """(PIN, PUK) for personalizing a card, asked on the terminal.

    Preset models carry the holder's sealed codes: Enter at the PUK prompt, then the sealed PIN once.
    Other models get new codes: the PUK and the PIN are each asked twice, and must differ.
    """
    puk = ask_code("New PUK (8 digits; Enter if the card's codes are preset): ")
    if not puk:
        return ask_code("Holder PIN (8 digits): "), ""
    import getpass

    if getpass.getpass("New PUK again: ") != puk:
        raise CommandError("the two new PUKs differ; nothing was changed")
    pin = ask_code("New PIN (8 digits): ", new=True)
    check_new_codes(new_pin=pin, puk=puk)
    return pin, puk


def follow_operation(messages, args: argparse.Namespace, what: str, headline) -> int:
    """Print an operation's progress stream (lines, or JSON lines with ``--json``), then its result.

    ``messages``: the agent's ``OperationProgress`` stream; ``headline(result dict) -> str`` the result's
    first line on a terminal. Exit status 0 when the operation is done, 1 when undone or still open.
    """
    import json

    from agent.api.client import AgentCallError, AgentUnavailableError

    result = None
    try:
        for msg in messages:
            if msg.HasField("result"):
                result = msg.result
            elif args.json:
                print(json.dumps({"step": msg.step, "message": msg.message}), flush=True)
            else:
                print(f"  {msg.step:24} {msg.message}", flush=True)
    except (AgentUnavailableError, AgentCallError) as exc:
        raise CommandError(str(exc)) from exc
    if result is None:
        raise CommandError(f"the agent ended the {what} without a result")
    d = {"op_id": result.op_id, "card_serial": result.card_serial, "state": result.state,
         "holder_label": result.holder_label, "certificate_subjects": dict(result.certificate_subjects),
         "test_signatures": result.test_signatures, "message": result.message,
         "stage_seconds": dict(result.stage_seconds), "pkcs11": result.pkcs11}
    if args.json:
        print(json.dumps({"result": d}), flush=True)
    else:
        print(headline(d).rstrip())
        for ks, subject in sorted(d["certificate_subjects"].items()):
            print(f"  {ks}: {subject}")
        if d["pkcs11"]:
            print(f"  PKCS#11 (OpenSC): {d['pkcs11']}")
    return 0 if result.state == "done" else 1

