"""The card administration token in its own process: ``TokenProcess`` (parent) and ``main`` (child).

A PKCS#11 module is loaded once per process with one configuration (SoftHSM2
reads ``SOFTHSM2_CONF`` at C_Initialize), and two daemons in one process (the
tests) or the embedded CA's own token would otherwise share it. So the daemon
talks to its token through a child process running ``keys.CardKeyToken``:
one JSON line per call on stdin/stdout. The token PIN goes to the child on its
stdin (never on a command line); only cryptograms and error messages come back.

Imports ``keys`` and the standard library only.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import weakref
from pathlib import Path

from personalizer.cardadmin.keys import CardKeyError

_CALLS = ("cryptogram", "has_master", "import_master", "generate_master", "wrapped_card_key", "batches",
          "batch_of", "load_batch", "master_info", "unwrap_master")


class TokenProcess:
    """The same calls as ``CardKeyToken``, answered by a child process holding the token session."""

    def __init__(self, *, module: str, token_label: str, pin: str, softhsm2_conf: Path | None = None):
        self._lock = threading.Lock()
        self._proc = subprocess.Popen([sys.executable, "-m", "personalizer.cardadmin.worker"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        # a daemon whose start failed after this (a busy port) never calls close(): stop the child with it
        self._finalizer = weakref.finalize(self, _stop, self._proc)
        self._call("open", module=module, token_label=token_label, pin=pin,
                   softhsm2_conf=str(softhsm2_conf) if softhsm2_conf else None)

    def _call(self, op: str, **kw):
        with self._lock:
            if self._proc.poll() is not None:
                raise CardKeyError("the card administration token process has stopped; restart the daemon")
            try:
                self._proc.stdin.write(json.dumps({"op": op, **kw}) + "\n")
                line = self._proc.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
        if not line:
            raise CardKeyError("the card administration token process has stopped; restart the daemon")
        answer = json.loads(line)
        if "error" in answer:
            raise (ValueError if answer.get("kind") == "ValueError" else CardKeyError)(answer["error"])
        return answer["result"]

    def cryptogram(self, *, model_id: str, scheme: str, serial: str, challenge: bytes, key_version: int = 1) -> bytes:
        return bytes.fromhex(self._call("cryptogram", model_id=model_id, scheme=scheme, serial=serial,
                                        challenge=challenge.hex(), key_version=key_version))

    def wrapped_card_key(self, *, model_id: str, scheme: str, serial: str) -> bytes:
        return bytes.fromhex(self._call("wrapped_card_key", model_id=model_id, scheme=scheme, serial=serial))

    def batches(self) -> list[dict]:
        return self._call("batches")

    def batch_of(self, serial: str) -> dict | None:
        return self._call("batch_of", serial=serial)

    def load_batch(self, *, batch: str, chamber: str, model_id: str, first: str, last: str, key: bytes) -> None:
        self._call("load_batch", batch=batch, chamber=chamber, model_id=model_id, first=first, last=last,
                   key=key.hex())

    def has_master(self, model_id: str) -> bool:
        return bool(self._call("has_master", model_id=model_id))

    def import_master(self, model_id: str, value: bytes) -> None:
        self._call("import_master", model_id=model_id, value=value.hex())

    def generate_master(self, model_id: str) -> None:
        self._call("generate_master", model_id=model_id)

    def master_info(self, model_id: str) -> dict | None:
        return self._call("master_info", model_id=model_id)

    def unwrap_master(self, model_id: str, wrapped: bytes, unwrapping_label: str) -> None:
        self._call("unwrap_master", model_id=model_id, wrapped=wrapped.hex(), unwrapping_label=unwrapping_label)

    def close(self) -> None:
        self._finalizer()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            proc.stdin.close()
            proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
    proc.stdout.close()


def main() -> int:
    from personalizer.cardadmin.keys import CardKeyToken

    token = None
    for line in sys.stdin:
        req = json.loads(line)
        op = req.pop("op")
        try:
            if op == "open":
                conf = req.pop("softhsm2_conf")
                token = CardKeyToken(softhsm2_conf=Path(conf) if conf else None, **req)
                result = True
            elif op in _CALLS and token is not None:
                if "challenge" in req:
                    req["challenge"] = bytes.fromhex(req["challenge"])
                for name in ("value", "key", "wrapped"):
                    if name in req:
                        req[name] = bytes.fromhex(req[name])
                result = getattr(token, op)(**req)
                if isinstance(result, bytes):
                    result = result.hex()
            else:
                raise CardKeyError(f"unknown token call {op!r}")
            answer = {"result": result}
        except (CardKeyError, ValueError) as exc:
            answer = {"error": str(exc), "kind": type(exc).__name__}
        except Exception as exc:   # a PKCS#11 error: its name only (never a key or the PIN)
            answer = {"error": f"token error: {type(exc).__name__}", "kind": "CardKeyError"}
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()
    if token is not None:
        token.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
