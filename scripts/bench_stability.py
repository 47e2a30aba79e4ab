"""What the stability monitor costs: its per-step gradient check and its per-logging-step update ratio,
next to one training step (forward + backward + foco step) of a small GPT-2. Prints a table.

    python scripts/bench_stability.py [--n_layer 4 --n_embd 256 --seq 256 --batch 8 --repeats 5]
"""

import argparse
import time
from types import SimpleNamespace

import torch
from transformers import GPT2Config, GPT2LMHeadModel, TrainerControl, TrainerState

from hf_foco.optim import create_optimizer
from hf_foco.trainer import StabilityCallback


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name, default in (("n_layer", 4), ("n_embd", 256), ("seq", 256), ("batch", 8), ("repeats", 5)):
        parser.add_argument(f"--{name}", type=int, default=default)
    opts = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = GPT2Config(n_layer=opts.n_layer, n_embd=opts.n_embd, n_head=max(1, opts.n_embd // 64),
                        n_positions=opts.seq, vocab_size=8192)
    model = GPT2LMHeadModel(config).to(device)
    optimizer = create_optimizer("foco", model)
    ids = torch.randint(0, config.vocab_size, (opts.batch, opts.seq), device=device)

    def train_step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()

    train_step()
    monitor = StabilityCallback()
    args = SimpleNamespace(logging_strategy="steps", logging_first_step=False, output_dir=None)
    state, control = TrainerState(), TrainerControl()
    state.logging_steps = 10**9  # never a logging step: the guard alone

    def guard():
        monitor.on_pre_optimizer_step(args, state, control, model=model, optimizer=optimizer)

    def guard_and_ratio():
        state.logging_steps = 1
        monitor.on_pre_optimizer_step(args, state, control, model=model, optimizer=optimizer)
        monitor.on_optimizer_step(args, state, control, model=model)
        state.logging_steps = 10**9

    step = best_of(train_step, opts.repeats)
    rows = [("train step (fwd+bwd+foco)", step), ("guard, every step", best_of(guard, opts.repeats)),
            ("guard + update ratio, logging steps", best_of(guard_and_ratio, opts.repeats))]
    params = sum(p.numel() for p in model.parameters())
    print(f"{device}, GPT-2 {opts.n_layer}x{opts.n_embd}, {params / 1e6:.1f} M params, batch {opts.batch}x{opts.seq}")
    print(f"{'what':<38}{'ms':>10}{'% of step':>12}")
    for what, seconds in rows:
        print(f"{what:<38}{seconds * 1e3:>10.2f}{100 * seconds / step:>11.1f}%")


if __name__ == "__main__":
    main()
