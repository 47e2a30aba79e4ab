"""One short FocoTrainer run per registry optimizer, the same code whether this process trains alone or is one
rank of a DDP launch (tests/test_ddp.py does both and compares).

``accelerate launch --config_file recipes/accelerate_configs/cpu_ddp.yaml tests/ddp_run.py OUT_DIR`` trains
every case on each of the 2 gloo ranks (PER_RANK examples each) and saves each rank's final parameters and
logged losses to ``OUT_DIR/<case>/rank<k>.pt``. Alone, a process trains with the same global batch
(PER_RANK x WORLD examples) laid out as the ranks' FOP halves (see ``ranks_halves_first``).
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from unittest import mock

import torch
from trainer_utils import SEQ, common_args, text_dataset
from transformers import default_data_collator

from hf_foco.models import build_model
from hf_foco.optim import kfac, list_optimizers
from hf_foco.trainer import FocoTrainer, FocoTrainingArguments

WORLD, PER_RANK, STEPS = 2, 4, 8
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
    """Stands in for kfac._sample_rows: each row's mode, which depends on the row only, not on its rank."""
    return weights.argmax(-1)


def train(case: str, output_dir, world_size: int) -> dict:
    """Train ``case`` for STEPS steps; returns the final parameters and the logged loss of every step."""
    optim, mode_labels = CASES[case]
    hooks = optim in KRONECKER
    args = FocoTrainingArguments(**common_args(
        output_dir, optim=optim, learning_rate=None if hooks else 3e-3, max_steps=STEPS,
        per_device_train_batch_size=PER_RANK if world_size > 1 else PER_RANK * WORLD))
    assert args.world_size == world_size, "not one DDP group: each rank trained alone"
    # gpt2-nano's architecture, shrunk, without dropout (whose masks would be drawn per rank).
    model = build_model("gpt2-nano", seed=0, vocab_size=128, n_layer=2, n_embd=32, n_head=2, n_positions=SEQ)
    trainer = FocoTrainer(model=model, args=args, train_dataset=text_dataset(PER_RANK * WORLD * STEPS),
                          data_collator=default_data_collator if world_size > 1 else ranks_halves_first)
    with mock.patch.object(kfac, "_sample_rows", most_likely) if mode_labels else contextlib.nullcontext():
        trainer.train()
    return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e]}


if __name__ == "__main__":
    torch.set_num_threads(1)
    out, world = Path(sys.argv[1]), int(os.environ["WORLD_SIZE"])
    for name in CASES:
        result = train(name, out / name, world)
        (out / name).mkdir(parents=True, exist_ok=True)
        torch.save(result, out / name / f"rank{os.environ['RANK']}.pt")
