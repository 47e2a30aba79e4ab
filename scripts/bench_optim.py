"""Optimizer step time against torch's fused AdamW, and against the machine's memory bandwidth.

All optimizers step the same parameters and gradients (shaped like a GPT-2 preset; default gpt2-small, 124M),
interleaved round by round so that machine noise hits them alike; the table reports the fastest step of the
rounds (other jobs on a shared machine only ever add time) and its ratio to torch's fused AdamW (what
transformers' default ``--optim adamw_torch_fused`` runs) and to its foreach AdamW. An elementwise step is
bound by memory traffic: "bytes/param" is what one pass that reads and writes each tensor once must move
(fused AdamW: read theta, g, m, v and write theta, m, v in fp32 = 28), "GB/s" that traffic divided by the step
time (for a foreach step, which makes several passes, an effective figure), beside the bandwidth of an in-place
``x += y`` on the same machine and threads, the practical limit of a step that reads some tensors and
updates others in place.

Each elementwise optimizer runs its fused step (CPU: the C++ kernels; CUDA: the ``torch.compile``-d multi-tensor
step, one call per optimizer step), its foreach step and, on CPU, the compiled step too (the CUDA code, compiled
for CPU by Inductor), with the registry's hyperparameters. The first step of each, untimed, builds or compiles.

    python scripts/bench_optim.py                 # CPU, gpt2-small shapes
    python scripts/bench_optim.py --device cuda   # a GPU: the compiled steps against fused AdamW, share of HBM bandwidth

The process's allocator is tuned as the training job's is (:mod:`hf_foco.allocator`).
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from hf_foco.allocator import tune_allocator
from hf_foco.models import build_model
from hf_foco.optim import create_optimizer, dispatch

# Bytes one fused pass moves per fp32 parameter: read g, read and write theta and the states.
TRAFFIC = {"adamw": 4 + 2 * (4 + 4 + 4), "foco": 4 + 2 * (4 + 2 + 2), "focus": 4 + 2 * (4 + 4 + 4),
           "signum": 4 + 2 * (4 + 4), "lion": 4 + 2 * (4 + 4)}
BASELINE, FOREACH_BASELINE, STREAM = "adamw (fused)", "adamw (foreach)", "x += y"


def candidates(device: str) -> dict:
    """name -> (constructor over a parameter list, the context its steps run in). On CPU "fused" is the C++
    kernels and "compiled" the CUDA path's compiled step; on CUDA the fused step is the compiled one."""
    plain = contextlib.nullcontext
    table = {BASELINE: (lambda ps: create_optimizer("adamw", ps, fused=True), plain),
             FOREACH_BASELINE: (lambda ps: create_optimizer("adamw", ps, foreach=True), plain)}
    for name in ("foco", "focus", "signum", "lion"):
        fused = "fused" if device == "cpu" else "compiled"
        table[f"{name} ({fused})"] = (lambda ps, name=name: create_optimizer(name, ps, fused=True), plain)
        if device == "cpu":
            table[f"{name} (compiled)"] = (lambda ps, name=name: create_optimizer(name, ps),
                                           lambda: dispatch.fused_implementation("cpu", "compiled"))
        table[f"{name} (foreach)"] = (lambda ps, name=name: create_optimizer(name, ps, foreach=True), plain)
    return table


def machine(device: str) -> str:
    """The processor's name and the thread count (CPU) or the GPU's name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as info:
            model = next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        import platform
        model = platform.processor() or platform.machine()
    return f"{model}, {torch.get_num_threads()} threads"


def state_bytes_per_param(opt: torch.optim.Optimizer, numel: int) -> float:
    """Bytes of per-parameter state tensors (scalar step counters excluded) per parameter."""
    tensors = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t) and t.dim() > 0]
    return sum(t.numel() * t.element_size() for t in tensors) / numel


def timed(fn, sync, rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return times


def stream_step(numel: int, device: str):
    """``x.add_(y)`` over ``numel`` fp32 elements (read x and y, write x: 12 bytes each), the access pattern of
    an optimizer step (a plain copy also reads the destination's cache lines before writing them, which an
    in-place update does not). Timed in the same rounds as the optimizers, so noise hits it alike."""
    gen = torch.Generator(device=device).manual_seed(1)
    x, y = (torch.randn(numel, generator=gen, device=device) for _ in range(2))
    return lambda: x.add_(y)


def _step_in(optimizer: torch.optim.Optimizer, context) -> None:
    with context():
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--rounds", type=int, default=7, help="timed steps per optimizer (the fastest is reported)")
    parser.add_argument("--only", nargs="*", help="substrings of optimizer names to run (fused AdamW always runs)")
    args = parser.parse_args()
    tune_allocator()
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    model = build_model(args.preset, seed=0)
    shapes = [p.shape for p in model.parameters()]
    del model
    numel = sum(s.numel() for s in shapes)
    gen = torch.Generator(device=args.device).manual_seed(0)
    # One set of parameters and gradients shared by all optimizers (the values do not change the step time).
    params = [torch.nn.Parameter(0.02 * torch.randn(s, generator=gen, device=args.device)) for s in shapes]
    for p in params:
        p.grad = 1e-3 * torch.randn(p.shape, generator=gen, device=args.device)

    optimizers, steps = {}, {}
    for name, (make, context) in candidates(args.device).items():
        if args.only and name != BASELINE and not any(s in name for s in args.only):
            continue
        optimizers[name] = opt = make(params)
        steps[name] = lambda opt=opt, context=context: _step_in(opt, context)
        steps[name]()  # creates the state; builds or compiles a fused step
        sync()
    steps[STREAM] = stream_step(numel, args.device)

    times = {name: [] for name in steps}
    for _ in range(args.rounds):
        for name, step in steps.items():
            times[name] += timed(step, sync, 1)
    best = {name: min(t) for name, t in times.items()}
    bandwidth = 12 * numel / best[STREAM]

    print(f"\n{args.preset} shapes: {numel / 1e6:.1f}M parameters in {len(shapes)} tensors; {args.device}: "
          f"{machine(args.device)}; fastest of {args.rounds} interleaved steps; torch {torch.__version__}")
    print(f"memory bandwidth of x += y (read x, y, write x): {bandwidth / 1e9:.1f} GB/s\n")
    print("| optimizer | step (ms) | vs AdamW fused | vs AdamW foreach | state bytes/param | bytes/param moved "
          "| GB/s | of x += y bandwidth |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, opt in optimizers.items():
        traffic = TRAFFIC[name.split()[0]]
        rate = traffic * numel / best[name]
        vs_foreach = f"{best[name] / best[FOREACH_BASELINE]:.2f}x" if FOREACH_BASELINE in best else "-"
        print(f"| {name} | {1e3 * best[name]:.1f} | {best[name] / best[BASELINE]:.2f}x | {vs_foreach} | "
              f"{state_bytes_per_param(opt, numel):.1f} | {traffic} | {rate / 1e9:.1f} | {rate / bandwidth:.0%} |")


if __name__ == "__main__":
    main()
