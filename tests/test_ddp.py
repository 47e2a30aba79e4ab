"""Every registry optimizer under real 2-process gloo DDP on CPU, through FocoTrainer, against one process.

One ``accelerate launch`` (recipes/accelerate_configs/cpu_ddp.yaml) of tests/ddp_run.py trains every case for
STEPS steps on 2 ranks of PER_RANK examples each; this process trains the same cases alone with the same
global batch (PER_RANK x 2). Checked per case: both ranks end with bit-identical parameters, and the loss
curve and the parameters equal the 1-process run's within fp32 rounding.

What is equal, and why:

* The data: both runs shuffle with the same seeded sampler, so step k's global batch holds the same 8
  examples (rank r gets rows 4r..4r+3).
* The gradient: DDP averages the ranks' 4-example means where one process takes the 8-example mean, the same
  number up to fp32 summation order (~1e-7 relative). Measured over 8 steps: losses within 1e-6 (one fp32
  ulp at a loss of 4.7), parameters within 1.2e-6 (AdamW; the sign-based optimizers end bit-identical).
  TOLERANCE (1e-5) is 10x that, and 1/20000 of what the loss falls over the run.
* FOP splits each rank's micro-batch in two, so its first half-batch is rows {0, 1, 4, 5}: the 1-process
  run lays its batch out the same way (``ddp_run.ranks_halves_first``). In natural order its halves differ
  and the runs drift 4e-3 apart in the loss.
* K-FAC factors come from labels sampled from the model. Each rank samples its own rows from the same seeded
  stream, so rank 1's rows get the random numbers one process spends on rows 0-3: the factors averaged over
  ranks are identical on both ranks (the ``*_sampled`` cases check that), but not one process's. The
  ``kfac`` and ``fop`` cases take each position's most likely token as its label instead (a choice that
  depends on the row, not on the rank), and then match one process like the others. The sampled cases are
  only checked to train alike: losses within SAMPLED_TOLERANCE (0.05; measured 8e-3, while the loss falls by
  0.27).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from ddp_run import CASES, STEPS, WORLD, train
from pretrain_utils import REPO

TOLERANCE, SAMPLED_TOLERANCE = 1e-5, 0.05


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(case -> the ranks' results, case -> the 1-process result); the launch runs while this process trains."""
    root = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "recipes" / "accelerate_configs" / "cpu_ddp.yaml"), str(Path(__file__).with_name("ddp_run.py")),
         str(root / "ddp")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        torch.set_num_threads(1)
        alone = {case: train(case, root / "alone" / case, world_size=1) for case in CASES}
        log, _ = launch.communicate(timeout=300)
    finally:
        if launch.poll() is None:
            launch.kill()
    assert launch.returncode == 0, log[-4000:]
    ranks = {case: [torch.load(root / "ddp" / case / f"rank{r}.pt") for r in range(WORLD)] for case in CASES}
    return ranks, alone


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_ranks_end_with_identical_parameters(runs, case):
    first, *others = runs[0][case]
    for other in others:
        for name, value in first["params"].items():
            assert torch.equal(value, other["params"][name]), name
    assert first["losses"][0] - first["losses"][-1] > 0.1  # it trained


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_loss_curve_matches_one_process_with_the_same_global_batch(runs, case):
    ddp, alone = runs[0][case][0], runs[1][case]
    assert len(ddp["losses"]) == len(alone["losses"]) == STEPS
    if case.endswith("_sampled"):
        assert ddp["losses"] == pytest.approx(alone["losses"], abs=SAMPLED_TOLERANCE)
        return
    assert ddp["losses"] == pytest.approx(alone["losses"], abs=TOLERANCE, rel=0)
    for name, value in alone["params"].items():
        torch.testing.assert_close(ddp["params"][name], value, rtol=0, atol=TOLERANCE, msg=name)
