"""Every registry optimizer under real 2-process gloo DDP on CPU, through FocoTrainer, against one process.

One ``accelerate launch`` (recipes/accelerate_configs/cpu_ddp.yaml) of this file as a script trains every case for
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
  run lays its batch out the same way (``ranks_halves_first``). In natural order its halves differ
  and the runs drift 4e-3 apart in the loss.
* K-FAC factors come from labels sampled from the model. Each rank samples its own rows from the same seeded
  stream, so rank 1's rows get the random numbers one process spends on rows 0-3: the factors averaged over
  ranks are identical on both ranks (the ``*_sampled`` cases check that), but not one process's. The
  ``kfac`` and ``fop`` cases take each position's most likely token as its label instead (a choice that
  depends on the row, not on the rank), and then match one process like the others. The sampled cases are
  only checked to train alike: losses within SAMPLED_TOLERANCE (0.05; measured 8e-3, while the loss falls by
  0.27).
* Muon orthogonalises its update in bf16 (torch's Newton–Schulz iterations): gradients equal up to fp32
  summation order can round to neighbouring bf16 values there, so an entry of its update (at most about 1.5
  times lr·0.2·sqrt(128) for these matrices) may differ by a few bf16 ulps (2^-8 relative) per step.
  MUON_TOLERANCE allows four of them at every step (measured: losses within 1.2e-5).
"""

import contextlib
import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from helpers import REPO, common_args, text_dataset, tiny_gpt2
from transformers import default_data_collator

from hf_foco.optim import list_optimizers
from hf_foco.optim.kfac import curvature
from hf_foco.trainer import FocoTrainer, FocoTrainingArguments

TOLERANCE, SAMPLED_TOLERANCE = 1e-5, 0.05
WORLD, PER_RANK, STEPS = 2, 4, 8
MUON_TOLERANCE = STEPS * 4 * 2 ** -8 * 1.5 * 3e-3 * 0.2 * 128 ** 0.5
KRONECKER = [s.name for s in list_optimizers() if s.needs_layer_hooks]
# case -> (registry name, whether K-FAC labels are each position's most likely token instead of a sample).
# Sampled labels are the one rank-local randomness: with them the ranks' averaged factors stay identical but
# differ from one process's (rank 1 draws the random numbers one process spends on rows 0-3, for rows 4-7).
CASES = {s.name: (s.name, s.needs_layer_hooks) for s in list_optimizers()}
CASES |= {f"{name}_sampled": (name, False) for name in KRONECKER}
# Rank r holds global rows r*PER_RANK ... ; FOP's first half-batch is the first half of every rank's rows.
ORDER = [r * PER_RANK + i for half in (range(PER_RANK // 2), range(PER_RANK // 2, PER_RANK))
         for r in range(WORLD) for i in half]


def ranks_halves_first(features: list[dict]) -> dict[str, torch.Tensor]:
    """One process's collator: the global batch ordered as DDP's FOP halves (all ranks' first halves, then
    their second halves), so both split it alike. Every other optimizer only sees the mean over the batch."""
    return default_data_collator([features[i] for i in ORDER])


def most_likely(weights: torch.Tensor, generator=None) -> torch.Tensor:
    """Stands in for curvature._sample_rows: each row's mode, which depends on the row only, not on its rank."""
    return weights.argmax(-1)


def train(case: str, output_dir, world_size: int) -> dict:
    """Train ``case`` for STEPS steps; returns the final parameters and the logged loss of every step."""
    optim, mode_labels = CASES[case]
    hooks = optim in KRONECKER
    args = FocoTrainingArguments(**common_args(
        output_dir, optim=optim, learning_rate=None if hooks else 3e-3, max_steps=STEPS,
        per_device_train_batch_size=PER_RANK if world_size > 1 else PER_RANK * WORLD))
    assert args.world_size == world_size, "not one DDP group: each rank trained alone"
    model = tiny_gpt2()  # no dropout, whose masks would be drawn per rank
    trainer = FocoTrainer(model=model, args=args, train_dataset=text_dataset(PER_RANK * WORLD * STEPS),
                          data_collator=default_data_collator if world_size > 1 else ranks_halves_first)
    with mock.patch.object(curvature, "_sample_rows", most_likely) if mode_labels else contextlib.nullcontext():
        trainer.train()
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(case -> the ranks' results, case -> the 1-process result); the launch runs while this process trains."""
    root = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launch = subprocess.Popen(
        [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
         str(REPO / "recipes" / "accelerate_configs" / "cpu_ddp.yaml"), __file__,
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
    tolerance = MUON_TOLERANCE if case == "muon" else TOLERANCE
    assert ddp["losses"] == pytest.approx(alone["losses"], abs=tolerance, rel=0)
    for name, value in alone["params"].items():
        torch.testing.assert_close(ddp["params"][name], value, rtol=0, atol=tolerance, msg=name)


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, world = Path(sys.argv[1]), int(os.environ["WORLD_SIZE"])
    for name in CASES:
        result = train(name, out / name, world)
        (out / name).mkdir(parents=True, exist_ok=True)
        torch.save(result, out / name / f"rank{os.environ['RANK']}.pt")
