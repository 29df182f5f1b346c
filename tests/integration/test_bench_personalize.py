"""``scripts/bench personalize`` runs end to end on a small sample and reports every stage.

No speed is asserted here (speed lives in the benchmark); this keeps the benchmark
working: two blank cards personalized through pcscd + vpcd, the agent's station
operations and the daemon, each stage accounted for, and two more with the card keys held on the
workstation as before issue 12 (the ratio's baseline, same run).
"""
from __future__ import annotations

import json
import subprocess
import sys

from firmware_profiles.emulator.pcscd import missing_tools
from tests.conftest import ROOT, require


def test_bench_personalize_small_sample():
    require(missing_tools())
    out = subprocess.run([sys.executable, "-m", "benchmarks", "personalize", "--cards", "2", "--warmup", "0"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["ok"] and result["personalizations"] == 2
    assert set(result["stage_ms"]) == {"card", "ca", "broker_excluding_ca", "agent_other"}
    assert result["stage_ms"]["card"] > 0 and result["stage_ms"]["ca"] > 0
    assert result["ca_samples"] >= 4                    # two issuances per card reached the CA
    assert result["mean_ms"] >= result["stage_ms"]["card"] + result["stage_ms"]["ca"]
    assert isinstance(result["meets_target"], bool)
    # issue 12 item 5: in the same run, the same job with the card keys on the workstation as before the change
    assert result["before_change"]["personalizations"] == 2 and result["before_change"]["mean_ms"] > 0
    assert result["card_admin_round_trips_per_card"] >= 1 and result["before_change"]["card_admin_round_trips_per_card"] == 0
    assert result["ratio_to_before"] == round(result["mean_ms"] / result["before_change"]["mean_ms"], 3) \
        or abs(result["ratio_to_before"] - result["mean_ms"] / result["before_change"]["mean_ms"]) < 0.01
    assert result["target_ratio_to_before"] == 1.2 and isinstance(result["meets_ratio_target"], bool)
    assert result["ratio_to_before_p50"] > 0 and result["before_change"]["p50_ms"] > 0
