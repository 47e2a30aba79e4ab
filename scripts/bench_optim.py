"""Optimizer step time and state memory on parameters shaped like a GPT-2 preset (default: gpt2-small, 124M).

Every optimizer steps the same parameters and gradients, interleaved round by round so that machine noise
hits them alike; the table reports the fastest step of the rounds (other jobs on a shared machine only ever
add time), its ratio to torch's foreach AdamW, and the optimizer state in bytes per parameter (counted
from the state tensors).

    python scripts/bench_optim.py                       # CPU, gpt2-small shapes
    python scripts/bench_optim.py --device cuda         # adds the fused paths that need CUDA
"""

from __future__ import annotations

import argparse
import time

import torch

from hf_foco.models import build_model
from hf_foco.optim import FOCUS, FOCUS16bit, Lion, Signum


def candidates(device: str) -> dict:
    """name -> constructor over a parameter list (hyperparameters at each optimizer's GPT-2 defaults)."""
    table = {
        "adamw (foreach)": lambda ps: torch.optim.AdamW(ps, lr=6e-4, weight_decay=0.1, foreach=True),
        "adamw (fused)": lambda ps: torch.optim.AdamW(ps, lr=6e-4, weight_decay=0.1, fused=True),
        "foco (foreach)": lambda ps: FOCUS16bit(ps, lr=6e-4, gamma=0.2, weight_decay=0.2, foreach=True),
        "foco (fused, torch.compile)": lambda ps: FOCUS16bit(ps, lr=6e-4, gamma=0.2, weight_decay=0.2, fused=True),
        "focus (foreach)": lambda ps: FOCUS(ps, lr=6e-4, gamma=0.2, weight_decay=0.2, foreach=True),
        "signum (foreach)": lambda ps: Signum(ps, lr=1e-4, weight_decay=0.1, foreach=True),
        "lion (foreach)": lambda ps: Lion(ps, lr=1e-4, weight_decay=0.5, foreach=True),
    }
    return table


def state_bytes_per_param(opt: torch.optim.Optimizer, numel: int) -> float:
    """Bytes of per-parameter state tensors (scalar step counters excluded) per parameter."""
    tensors = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    return sum(t.numel() * t.element_size() for t in tensors) / numel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per optimizer (the fastest is reported)")
    parser.add_argument("--only", nargs="*", help="substrings of optimizer names to run")
    args = parser.parse_args()

    model = build_model(args.preset, seed=0).to(args.device)
    shapes = [p.shape for p in model.parameters()]
    del model
    numel = sum(s.numel() for s in shapes)
    gen = torch.Generator(device=args.device).manual_seed(0)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    optimizers = {}
    for name, make in candidates(args.device).items():
        if args.only and not any(s in name for s in args.only):
            continue
        params = [torch.nn.Parameter(0.02 * torch.randn(s, generator=gen, device=args.device)) for s in shapes]
        for p in params:
            p.grad = 1e-3 * torch.randn(p.shape, generator=gen, device=args.device)
        try:
            opt = make(params)
            opt.step()  # creates state; compiles the fused kernel
            sync()
        except (RuntimeError, ValueError) as err:  # e.g. a fused kernel this device lacks
            print(f"skipping {name}: {err}")
            continue
        optimizers[name] = opt

    times = {name: [] for name in optimizers}
    for _ in range(args.rounds):
        for name, opt in optimizers.items():
            sync()
            start = time.perf_counter()
            opt.step()
            sync()
            times[name].append(time.perf_counter() - start)

    base = min(times.get("adamw (foreach)", [float("nan")]))
    print(f"\n{args.preset} shapes: {numel / 1e6:.1f}M parameters in {len(shapes)} tensors, device {args.device}, "
          f"{torch.get_num_threads()} threads, fastest of {args.rounds} interleaved steps\n")
    print("| optimizer | step (ms) | vs AdamW foreach | state bytes/param |")
    print("|---|---:|---:|---:|")
    for name, opt in optimizers.items():
        best = min(times[name])
        print(f"| {name} | {1e3 * best:.1f} | {best / base:.2f}x | "
              f"{state_bytes_per_param(opt, numel):.1f} |")


if __name__ == "__main__":
    main()
