"""scripts/gpu_smoke.sh, the one-GPU smoke test: its CPU dry run executes every part (a tiny model, the CPU),
so the script and its arguments cannot rot; without a GPU and without --dry-run it says so and stops."""

import json
import os
import subprocess

import pytest
import torch
from helpers import REPO

SCRIPT = REPO / "scripts" / "gpu_smoke.sh"
PARTS = ("bench", "foco", "adamw", "fop", "fsdp")


@pytest.mark.slow
def test_the_dry_run_runs_every_part_and_reports_each_exit_status(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(SCRIPT), "--dry-run", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = proc.stdout[proc.stdout.rindex("=== summary"):]
    for part in PARTS:
        assert f"{part:6s} exit   0" in summary, summary
    assert "foco / fused AdamW tokens/s:" in summary
    bench = (tmp_path / "bench" / "log.txt").read_text()
    assert "vs AdamW fused" in bench and "\n| foco" in bench  # the bench's table, with a foco row
    results = {part: json.loads((tmp_path / part / "smoke.json").read_text()) for part in PARTS[1:]}
    assert {r["optim"] for r in results.values()} == {"foco", "adamw_torch_fused", "fop"}
    for part, r in results.items():
        assert r["problems"] == [] and r["tokens_per_s"] > 0, part
        assert r["losses"][-1] < r["losses"][0] - 0.1, part  # the 4 repeated sequences are being learned
        assert r["graphs_by_warmup"] == r["graphs_after_warmup"] == 0, part  # no torch_compile in a dry run
    assert not results["fsdp"]["sharded"]  # accelerate enables FSDP on GPUs only


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the real smoke test would run")
def test_without_a_gpu_it_points_to_the_dry_run(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no CUDA GPU is visible to torch; run 'scripts/gpu_smoke.sh --dry-run'" in proc.stderr
