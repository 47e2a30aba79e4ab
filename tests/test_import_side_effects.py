"""Importing hf_foco and drawing its figures leave the process's global state alone: a notebook keeps its
matplotlib backend and pyplot's figure registry, whatever hf_foco plots."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO

PROBE = """
import json, sys
from pathlib import Path
import matplotlib
matplotlib.use("svg")  # the user's choice, as a notebook's inline backend is
import hf_foco, hf_foco.cli, hf_foco.run, hf_foco.trainer
from hf_foco.artifacts.plots import plot_loss_curve
from hf_foco.compare.report import plot_lr_sensitivity
from hf_foco.valley import make_panel, plot_winner_map
out = Path(sys.argv[1])
plot_loss_curve([{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5, "eval_loss": 1.7}], out / "loss.png")
plot_lr_sensitivity([{"optimizer": "foco", "learning_rate": lr, "final_eval_loss": 3.0 + lr, "diverged": False}
                     for lr in (1e-3, 2e-3)], {"foco": "C0"}, out / "lr.png")
panel = make_panel("a", 2, 2)
import torch
plot_winner_map(panel, {"adam": {"score": torch.zeros(4)}, "signum": {"score": torch.arange(4.0) - 1.5}},
                out / "valley.png", "winner")
print(json.dumps({"backend": matplotlib.get_backend(), "pyplot": "matplotlib.pyplot" in sys.modules,
                  "pngs": sorted(p.name for p in out.glob("*.png") if p.stat().st_size > 1000)}))
"""


@pytest.mark.slow
def test_importing_and_plotting_leaves_the_matplotlib_backend_and_pyplot_alone(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "MPLBACKEND": ""}
    proc = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {
        "backend": "svg", "pyplot": False, "pngs": ["loss.png", "lr.png", "valley.png"]}
