#!/usr/bin/env python
"""Throughput of run_pretrain's training loop against a minimal plain-PyTorch loop.

Both loops train the same freshly initialised preset (seeded) on the same packed blocks of the built-in
corpus, with the same batch, optimizer (built from the recipe's settings), gradient clipping and thread
count. The Trainer side is exactly what ``scripts/run_pretrain.py`` builds (``hf_foco.pretrain.build_trainer``:
FocoTrainer, data collator, stability monitor). Tokens/s is measured over the steps after ``--warmup``
(step times from a callback, so start-up, evaluation and saving are not counted), in wall-clock and in
process CPU time (steadier on a shared machine), with the minor page faults and kernel (system) time per step;
the two loops alternate ``--repeats`` times and the median is reported, so a noisy machine hurts both alike.

The process tunes glibc's allocator first, as ``run_pretrain`` does (:mod:`hf_foco.allocator`); compare with
``HF_FOCO_MALLOC_TUNING=0`` (untuned) and ``HF_FOCO_CPU_KERNELS=0`` (foreach optimizer steps):

    python scripts/bench_train.py --presets gpt2-nano gpt2-micro --threads 2
    HF_FOCO_MALLOC_TUNING=0 python scripts/bench_train.py --presets gpt2-nano --steps 100
"""

from __future__ import annotations

import argparse
import resource
import statistics
import tempfile
import time

import torch
from transformers import TrainerCallback

from hf_foco.allocator import ENV_SWITCH, tune_allocator
from hf_foco.optim import cpu_kernels, create_optimizer
from hf_foco.pretrain import build_trainer, parse_args

RECIPE = "recipes/gpt2-nano/{optim}.yaml"


def now() -> tuple[float, float, int, float]:
    """(wall clock, this process's CPU time, its minor page faults, its system time): on a shared machine the
    CPU time is the steadier measure."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), time.process_time(), usage.ru_minflt, usage.ru_stime


class StepClock(TrainerCallback):
    """Clock readings at every optimizer step's end."""

    def __init__(self):
        self.times: list[tuple[float, float, int, float]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(now())


def tokens_per_second(times: list[tuple], warmup: int, tokens_per_step: int) -> tuple[float, float, float, float]:
    """(tokens per wall second, tokens per CPU second, minor page faults per step, system seconds per step)
    over the steps after ``warmup``."""
    first, last = times[warmup], times[-1]
    steps = len(times) - warmup - 1
    wall, cpu, faults, system = (b - a for a, b in zip(first, last))
    return steps * tokens_per_step / wall, steps * tokens_per_step / cpu, faults / steps, system / steps


def trainer_run(argv: list[str], warmup: int, tokens_per_step: int) -> tuple[float, float, float, float]:
    model_args, data_args, args = parse_args(argv)
    clock = StepClock()
    trainer, _ = build_trainer(model_args, data_args, args, callbacks=[clock])
    trainer.train()
    return tokens_per_second(clock.times, warmup, tokens_per_step)


def plain_run(argv: list[str], warmup: int, tokens_per_step: int,
              fused_adamw: bool = False) -> tuple[float, float, float, float]:
    """The loop every PyTorch user writes: forward, backward, clip, step, zero_grad, schedule; with the
    recipe's optimizer, or torch's fused AdamW (``fused_adamw``, at the registry's GPT-2 settings)."""
    model_args, data_args, args = parse_args(argv)
    trainer, _ = build_trainer(model_args, data_args, args)  # only for the same model init and data
    model, data = trainer.model.train(), trainer.train_dataset  # the model on the Trainer's device
    if fused_adamw:
        optimizer = create_optimizer("adamw", model, weight_decay_policy=args.weight_decay_policy, fused=True)
    else:
        optimizer = create_optimizer(args.optim, model, weight_decay_policy=args.weight_decay_policy,
                                     **args.optimizer_kwargs())
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    batch = args.per_device_train_batch_size
    times = []
    for step in range(args.max_steps):
        ids = torch.as_tensor(data[step * batch:(step + 1) * batch]["input_ids"], dtype=torch.long, device=model.device)
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
    parser.add_argument("--plain_optim", choices=["same", "adamw_fused"], default="same",
                        help="the plain loop's optimizer: the recipe's, or torch's fused AdamW (what a user would "
                             "pick instead)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, nargs="+", default=[32, 8], help="per preset, in order")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 12], help="per preset, in order")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    cli = parser.parse_args()
    tuned = tune_allocator()
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
                plain.append(plain_run(argv, cli.warmup, tokens, fused_adamw=cli.plain_optim == "adamw_fused"))
                hf.append(trainer_run(argv, cli.warmup, tokens))
        wall, cpu, faults, system = ([statistics.median(r[i] for r in runs) for runs in (plain, hf)] for i in range(4))
        rows.append((preset, f"{batch} x {cli.block_size}", *wall, wall[1] / wall[0], *cpu, cpu[1] / cpu[0],
                     faults[1], system[1]))
        print(f"{preset}: plain {plain}, run_pretrain {hf} (wall tok/s, CPU tok/s, minor faults/step, sys s/step)",
              flush=True)
    plain_optim = "torch fused AdamW" if cli.plain_optim == "adamw_fused" else cli.optim
    print(f"\noptimizer {cli.optim} (plain loop: {plain_optim}), {cli.threads} thread(s), median of {cli.repeats} alternating runs; tokens/s; "
          f"allocator tuning {'on' if tuned else f'off ({ENV_SWITCH}=0 or not glibc)'}, fused CPU optimizer "
          f"kernels {'off' if isinstance(cpu_kernels.load(), str) else 'on'}")
    print("| preset | batch x block | plain (wall) | run_pretrain (wall) | ratio | plain (CPU) | run_pretrain (CPU) "
          "| ratio | run_pretrain minor faults/step | run_pretrain sys s/step |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for preset, shape, *numbers in rows:
        cells = [f"{x:.3f}" if i in (2, 5, 7) else f"{x:,.0f}" for i, x in enumerate(numbers)]
        print(f"| {preset} | {shape} | {' | '.join(cells)} |")

if __name__ == "__main__":
    main()
