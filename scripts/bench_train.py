#!/usr/bin/env python
"""Throughput of run_pretrain's training loop against a minimal plain-PyTorch loop.

Both loops train the same freshly initialised preset (seeded) on the same packed blocks of the built-in
corpus, with the same batch, optimizer (built from the recipe's settings), gradient clipping and thread
count. The Trainer side is exactly what ``scripts/run_pretrain.py`` builds (``hf_foco.pretrain.build_trainer``:
FocoTrainer, data collator, stability monitor). Tokens/s is measured over the steps after ``--warmup``
(step times from a callback, so start-up, evaluation and saving are not counted), in wall-clock and in
process CPU time (steadier on a shared machine); the two loops alternate ``--repeats`` times and the
median is reported, so a noisy machine hurts both alike.

    python scripts/bench_train.py --presets gpt2-nano gpt2-micro --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback

from hf_foco.optim import create_optimizer
from hf_foco.pretrain import build_trainer, parse_args

RECIPE = "recipes/gpt2-nano/{optim}.yaml"


def now() -> tuple[float, float]:
    """(wall clock, this process's CPU time): on a shared machine the CPU time is the steadier measure."""
    return time.perf_counter(), time.process_time()


class StepClock(TrainerCallback):
    """Clock readings at every optimizer step's end."""

    def __init__(self):
        self.times: list[tuple[float, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(now())


def tokens_per_second(times: list[tuple[float, float]], warmup: int, tokens_per_step: int) -> tuple[float, float]:
    """(tokens per wall second, tokens per CPU second) over the steps after ``warmup``."""
    first, last = times[warmup], times[-1]
    tokens = (len(times) - warmup - 1) * tokens_per_step
    return tokens / (last[0] - first[0]), tokens / (last[1] - first[1])


def trainer_run(argv: list[str], warmup: int, tokens_per_step: int) -> tuple[float, float]:
    model_args, data_args, args = parse_args(argv)
    clock = StepClock()
    trainer, _ = build_trainer(model_args, data_args, args, callbacks=[clock])
    trainer.train()
    return tokens_per_second(clock.times, warmup, tokens_per_step)


def plain_run(argv: list[str], warmup: int, tokens_per_step: int) -> tuple[float, float]:
    """The loop every PyTorch user writes: forward, backward, clip, step, zero_grad, schedule."""
    model_args, data_args, args = parse_args(argv)
    trainer, _ = build_trainer(model_args, data_args, args)  # only for the same model init and data
    model, data = trainer.model.train(), trainer.train_dataset
    optimizer = create_optimizer(args.optim, model, weight_decay_policy=args.weight_decay_policy,
                                 **args.optimizer_kwargs())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batch = args.per_device_train_batch_size
    times = []
    for step in range(args.max_steps):
        ids = torch.as_tensor(data[step * batch:(step + 1) * batch]["input_ids"], dtype=torch.long)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(now())
    return tokens_per_second(times, warmup, tokens_per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["gpt2-nano", "gpt2-micro"])
    parser.add_argument("--optim", default="foco", help="which recipes/gpt2-nano/<optim>.yaml settings to use")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 8], help="per preset, in order")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 12], help="per preset, in order")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    cli = parser.parse_args()
    torch.set_num_threads(cli.threads)
    rows = []
    for i, preset in enumerate(cli.presets):
        batch, steps = cli.batch[min(i, len(cli.batch) - 1)], cli.steps[min(i, len(cli.steps) - 1)]
        with tempfile.TemporaryDirectory() as out:
            argv = [RECIPE.format(optim=cli.optim), "--model", preset, "--output_dir", out, "--max_steps", str(steps),
                    "--per_device_train_batch_size", str(batch), "--block_size", str(cli.block_size),
                    "--logging_steps", "10", "--eval_strategy", "no", "--disable_tqdm", "true",
                    "--tokenizer_vocab_size", str(4096 if preset == "gpt2-nano" else 8192)]
            tokens = batch * cli.block_size
            plain, hf = [], []
            for _ in range(cli.repeats):
                plain.append(plain_run(argv, cli.warmup, tokens))
                hf.append(trainer_run(argv, cli.warmup, tokens))
        wall = [statistics.median(r[0] for r in runs) for runs in (plain, hf)]
        cpu = [statistics.median(r[1] for r in runs) for runs in (plain, hf)]
        rows.append((preset, f"{batch} x {cli.block_size}", *wall, wall[1] / wall[0], *cpu, cpu[1] / cpu[0]))
        print(f"{preset}: plain {plain}, run_pretrain {hf} (wall, cpu tok/s)", flush=True)
    print(f"\noptimizer {cli.optim}, {cli.threads} thread(s), median of {cli.repeats} alternating runs; tokens/s")
    print("| preset | batch x block | plain (wall) | run_pretrain (wall) | ratio | plain (CPU) | run_pretrain (CPU) "
          "| ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for preset, shape, *numbers in rows:
        cells = [f"{x:.3f}" if i in (2, 5) else f"{x:,.0f}" for i, x in enumerate(numbers)]
        print(f"| {preset} | {shape} | {' | '.join(cells)} |")

if __name__ == "__main__":
    main()
