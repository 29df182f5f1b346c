"""A bounded run of ``scripts/bench token-release``: the delta download meets its target and every faulted
trial ends with the exact new release."""
from __future__ import annotations

from benchmarks import token_release
from tests.conftest import require
from tests.releases import nginx


def test_bench_token_release_small_sample():
    require(nginx.missing())
    r = token_release.main(["--cdrom-mib", "4", "--disk-mib", "2", "--changed", "1", "--faults", "4"])
    assert r["ok"], r
    assert r["downloaded_bytes_clean_with_metadata"] <= r["target_bytes"]
    assert r["fault_trials_exact"] == r["fault_trials"] == 4
