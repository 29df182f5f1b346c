"""``python -m firmware_profiles.usbemu serve-token --profile MODEL [--flash FILE] [--usbip HOST:PORT]``:
run one emulated token for testers and export it over USB/IP until Ctrl-C (``usbip list -r HOST``,
then ``usbip attach -r HOST -b 1-1`` on a machine with the vhci driver). Meant to become
``cns-emulator serve-token``. Errors are one line."""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import threading
from pathlib import Path

from firmware_profiles.model import ProfileError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m firmware_profiles.usbemu")
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve-token", help="serve one emulated CNS token over USB/IP")
    s.add_argument("--profile", required=True, help="token model id (firmware_profiles/tokens/)")
    s.add_argument("--flash", help="flash file (sparse; created if missing; default: a temporary one)")
    s.add_argument("--usbip", default="127.0.0.1:3240", help="HOST:PORT to listen on (default 127.0.0.1:3240)")
    args = ap.parse_args(argv)
    from firmware_profiles.usbemu import make_token
    from firmware_profiles.usbemu.usbip_export import UsbipExport
    from firmware_profiles.usbtoken import load_token_models
    try:
        models = load_token_models()
    except ProfileError as exc:
        print(f"serve-token: {exc}", file=sys.stderr)
        return 2
    if args.profile not in models:
        print(f"serve-token: no token model {args.profile!r}; known: {', '.join(sorted(models))}", file=sys.stderr)
        return 2
    host, _, port = args.usbip.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        print(f"serve-token: --usbip must be HOST:PORT, got {args.usbip!r}", file=sys.stderr)
        return 2
    tmp = None
    flash = Path(args.flash) if args.flash else Path((tmp := tempfile.TemporaryDirectory()).name) / "flash.bin"
    token = make_token(models[args.profile], flash)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: done.set())
    try:
        with UsbipExport(token, host=host, port=int(port)):
            print(f"serving token {token.serial} ({args.profile}, firmware {token.firmware_version}) over USB/IP "
                  f"on {host}:{port}; Ctrl-C stops", flush=True)
            done.wait()
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"serve-token: cannot listen on {host}:{port}: {exc.strerror}", file=sys.stderr)
        return 1
    finally:
        token.flash.close()
        if tmp is not None:
            tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
