"""Test entry point: ``cns-agent`` that SIGKILLs itself at one journaled step of one operation kind.

Run instead of the ``cns-agent`` console script (``python tests/support/kill_at.py run --config …``)
with ``CNS_TEST_KILL_AT=<kind>:<step>[:begun|:answered|:done]`` (phase ``begun`` when left out), e.g.
``renew:switch:begun`` or ``renew:renew:CNS0:answered``. The kill hangs on the step engine's callback
(``StationOps.on_step``, called after a step's record is durable, and by a renewal when a request's
answer has arrived and is not journaled yet): production code reads no fault setting. The holder's
``cns-agent renew --self`` has no StationOps: its ``Renewer`` (``agent.commands.self_renew``) gets the same
callback.

Imports ``agent`` only (it runs as a script, outside the tests package).
"""
from __future__ import annotations

import logging
import os
import signal
import sys

ENV = "CNS_TEST_KILL_AT"
PHASES = ("begun", "answered", "done")


def parse(spec: str) -> tuple[str, str, str]:
    """``kind:step[:phase]`` → (kind, step, phase). Steps may hold a colon (``renew:CNS0``)."""
    kind, _, rest = spec.partition(":")
    step, _, phase = rest.rpartition(":")
    if phase not in PHASES:
        step, phase = rest, "begun"
    if not kind or not step:
        raise SystemExit(f"{ENV}={spec!r}: expected <kind>:<step>[:begun|:answered|:done]")
    return kind, step, phase


def install(spec: str) -> None:
    from agent.ops import station

    target = parse(spec)
    init = station.StationOps.__init__

    def on_step(kind: str, step: str, phase: str) -> None:
        if (kind, step, phase) == target:
            logging.getLogger("cns.test.kill_at").warning("%s=%s: SIGKILL at %s %s", ENV, spec, step, phase)
            os.kill(os.getpid(), signal.SIGKILL)

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.on_step = on_step

    station.StationOps.__init__ = patched

    # the holder's command takes Renewer from agent.ops.renew, and so does StationOps when a renewal runs
    # (it imports the module then): the step callback it gave (the operator's stop) still runs after ours
    from agent.ops import renew

    class KillingRenewer(renew.Renewer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            given = self.on_step

            def killing(step: str, phase: str) -> None:
                on_step(renew.KIND, step, phase)
                given(step, phase)
            self.on_step = killing

    renew.Renewer = KillingRenewer
    holder = sys.modules.get("agent.commands.self_renew")
    if holder is not None and hasattr(holder, "Renewer"):   # already imported, with its own binding
        holder.Renewer = KillingRenewer


def main() -> int:
    spec = os.environ.get(ENV, "")
    if spec:
        install(spec)
    from agent.cli import main as agent_main
    return agent_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
