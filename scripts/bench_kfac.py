"""Wall time per training step of fop and kfac against AdamW on GPT-2 presets, and K-FAC's factor memory.

Each optimizer trains the same preset on the same random tokens through FocoTrainer with its default
factor schedule (a refresh every step for the first 20 steps, then every 5) and, like the nano recipes,
curvature from ``--curvature-examples`` sequences; FOP's two half-batch passes are included. The default
241 steps time a whole nano study run (240 steps), so the dense start is averaged in as it is in training.
A round runs every optimizer once, in turn, so machine noise hits them alike; the table reports the median
over rounds of the mean step time (the first step, with its setup, left out) and the ratio to AdamW's.

    python scripts/bench_kfac.py --threads 1                      # gpt2-nano, a whole 240-step run, CPU
    python scripts/bench_kfac.py --threads 1 --presets gpt2-micro --rounds 1 --steps 41
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from datasets import Dataset
from transformers import TrainerCallback

from hf_foco.models import build_model
from hf_foco.trainer import FocoTrainer, FocoTrainingArguments, unwrap_optimizer

FACTOR_KEYS = ("A", "G", "A_inv", "G_inv")


class StepTimer(TrainerCallback):
    """Seconds from each step's begin to its end (forward, backward(s), clipping, optimizer step)."""

    def __init__(self):
        self.durations: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.durations.append(time.perf_counter() - self._start)


def run(preset: str, optim: str, args) -> tuple[float, float]:
    """(mean seconds per step after the first, factor MiB) for one short training run."""
    model = build_model(preset, seed=0)
    vocab = model.config.vocab_size
    tokens = torch.randint(0, vocab, (args.batch * args.steps, args.block), generator=torch.Generator().manual_seed(0))
    data = Dataset.from_dict({"input_ids": tokens.tolist(), "labels": tokens.tolist()})
    kwargs = {"curvature_examples": args.curvature_examples or None} if optim != "adamw" else None
    with tempfile.TemporaryDirectory() as out:
        training = FocoTrainingArguments(
            output_dir=out, optim=optim, optim_kwargs=kwargs, max_steps=args.steps,
            per_device_train_batch_size=args.batch, report_to=[], save_strategy="no", disable_tqdm=True,
            logging_strategy="no", use_cpu=args.device == "cpu", stability_monitor=False, seed=0)
        timer = StepTimer()
        trainer = FocoTrainer(model=model, args=training, train_dataset=data, callbacks=[timer])
        trainer.train()
    state = unwrap_optimizer(trainer.optimizer).state.values()
    factor_bytes = sum(s[k].numel() * s[k].element_size() for s in state for k in FACTOR_KEYS if k in s)
    return statistics.mean(timer.durations[1:]), factor_bytes / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["gpt2-nano"])
    parser.add_argument("--optims", nargs="+", default=["adamw", "kfac", "fop"])
    parser.add_argument("--steps", type=int, default=241, help="steps per run (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per optimizer (median reported)")
    parser.add_argument("--batch", type=int, default=16, help="sequences per step (even, for FOP's halves)")
    parser.add_argument("--block", type=int, default=128, help="tokens per sequence")
    parser.add_argument("--curvature-examples", type=int, default=4,
                        help="sequences the factors are refreshed from (the nano recipes' 4; 0: the whole batch)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads (1 is steadier on a shared machine)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    print(f"device={args.device} threads={torch.get_num_threads()} batch={args.batch}x{args.block} tokens "
          f"steps={args.steps} curvature from {args.curvature_examples or 'all'} sequences, "
          f"median of {args.rounds} rounds")
    print(f"{'preset':<12} {'optimizer':<8} {'s/step':>8} {'x adamw':>8} {'factors (A,G + inverses) MiB':>30}")
    for preset in args.presets:
        times: dict[str, list[float]] = {o: [] for o in args.optims}
        memory: dict[str, float] = {}
        for _ in range(args.rounds):
            for optim in args.optims:
                seconds, memory[optim] = run(preset, optim, args)
                times[optim].append(seconds)
        base = statistics.median(times["adamw"]) if "adamw" in times else float("nan")
        for optim in args.optims:
            median = statistics.median(times[optim])
            print(f"{preset:<12} {optim:<8} {median:>8.3f} {median / base:>8.2f} {memory[optim]:>30.2f}")


if __name__ == "__main__":
    main()
