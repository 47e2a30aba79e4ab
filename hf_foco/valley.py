"""The narrowing valley of the FOCUS paper (Fig. 2): a 2-D toy where gradient noise and a valley that
narrows as it deepens decide whether Adam or a sign method (Signum, FOCUS) reaches the lower loss.

Landscape (spec: /work/shared/spec/narrowing-valley.md). Rotate p by phi = pi/6 into x (along the valley)
and y (across): ``L = a/2 * x^2 y^2 - c x`` with c = 0.1. The across-valley curvature a*x^2 grows as the
optimizer travels, so the floor narrows; L is unbounded below and only weight decay gives a finite optimum.
The gradient is rotated back to the p basis and multiplied coordinatewise by xi ~ N(1, sigma^2) there: the
tilt makes the noise matter to sign methods, which act per p coordinate.

Every toy optimizer is the package's (or torch's) functional update rule, called on one tensor of shape
(2, cells, replicates) per learning rate, so a whole block of (sigma, a, omega) cells moves in one call.
The rules take learning rate and weight decay as Python scalars; the sweep loops over learning rates, and
a per-cell decay is applied outside the rule as a tensor, which is exact for these rules:

* ``adam``: torch's Adam with decoupled decay ``omega * p`` (AdamW; the Adam step does not depend on p,
  so decaying the pre-step p outside the call is AdamW's update).
* ``signum`` (momentum 0.9), ``lion`` (betas 0.9, 0.99): decay ``omega * p`` of the pre-step p, which is
  what their classes do (``p *= 1 - lr*omega`` before the sign step).
* ``focus``: the spec's toy FOCUS, betas (0.9, 0.9), gamma 0.2, decay ``omega * p`` of the pre-step p
  "inside the same step", so that gamma = 0 is exactly ``signum``. The spot values of the spec come from
  this rule.
* ``focus-official``: the same with the package FOCUS class's own decay ``omega * theta_hat`` (official
  order: sign step, then decay by the bias-corrected parameter EMA), for comparison with the toy's choice.
* ``foco``: the package's foco rule as is (16-bit state, decay ``omega * theta_hat`` inside the rule, as
  the official FOCUS). Its decay cannot be applied from outside, so its blocks hold a single omega;
  on the omega panel that makes it several times slower than the others.

Each of these is tested step by step against its optimizer class (tests/test_valley.py), the toy
``focus`` against the FOCUS class without decay and against Signum with gamma = 0.

Score per cell: final L (without the decay term), mean over replicates, minimum over learning rates; the
winner is the optimizer with the lowest score. Non-finite final losses count as +inf.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.optim import adam as torch_adam

from .optim.foco import Foco, _single_tensor_foco
from .optim.focus import _single_tensor_focus
from .optim.lion import _single_tensor_lion
from .optim.signum import _single_tensor_signum

PHI = math.pi / 6
COS, SIN = math.cos(PHI), math.sin(PHI)
TILT = 0.1  # c: the slope along the valley floor
INIT_SCALE = 1e-4


# ---------------------------------------------------------------------------------------------- landscape
def valley_loss(p: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
    """L(p) for p of shape (2, ...); ``a`` broadcasts against p[0]."""
    x = COS * p[0] + SIN * p[1]
    y = COS * p[1] - SIN * p[0]
    return 0.5 * a * (x * y) ** 2 - TILT * x


def valley_grad(p: torch.Tensor, a: torch.Tensor | float) -> torch.Tensor:
    """Exact gradient of L in the p basis, shape of p."""
    x = COS * p[0] + SIN * p[1]
    y = COS * p[1] - SIN * p[0]
    axy = a * x * y
    gx = axy * y - TILT
    gy = axy * x
    return torch.stack((COS * gx - SIN * gy, SIN * gx + COS * gy))


def noisy_grad(p, a, sigma, generator: torch.Generator) -> torch.Tensor:
    """Gradient times independent xi ~ N(1, sigma^2) per p coordinate (``sigma`` broadcasts like ``a``)."""
    xi = torch.randn(p.shape, generator=generator, dtype=p.dtype).mul_(sigma).add_(1.0)
    return valley_grad(p, a).mul_(xi)


# ------------------------------------------------------------------------------------------ toy optimizers
def _adam_rule(params, grads, exp_avgs, exp_avg_sqs, steps, *, lr, weight_decay, beta1, beta2, eps):
    """torch's functional AdamW in the argument order of hf_foco's rules."""
    torch_adam.adam(params, grads, exp_avgs, exp_avg_sqs, [], steps, foreach=False, amsgrad=False,
                    beta1=beta1, beta2=beta2, lr=lr, weight_decay=weight_decay, eps=eps, maximize=False,
                    decoupled_weight_decay=True)


@dataclasses.dataclass(frozen=True)
class ToyOptimizer:
    """A functional update rule plus where its weight decay is applied.

    ``decay``: "param" subtracts lr*omega*p(pre-step) after the rule; "ema" subtracts
    lr*omega*theta_hat (FOCUS's official decay, theta_hat from the rule's updated ``param_avg``);
    "rule" passes omega to the rule itself (needs one omega per call). ``make_state`` builds the state
    tensors named ``state_names`` (fp32 zeros unless the optimizer class keeps other dtypes).
    """

    label: str
    rule: Callable
    state_names: tuple[str, ...]
    hyper: dict
    decay: str = "param"
    make_state: Callable[[torch.Tensor], dict] | None = None

    def init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = (self.make_state(p) if self.make_state else
                 {name: torch.zeros_like(p, dtype=torch.float32) for name in self.state_names})
        state["step"] = torch.tensor(0.0)
        return state

    def step(self, p, g, state, lr: float, omega: torch.Tensor | float) -> None:
        before = p.clone() if self.decay == "param" else None
        self.rule([p], [g], *([state[name]] for name in self.state_names), [state["step"]], lr=lr,
                  weight_decay=omega if self.decay == "rule" else 0.0, **self.hyper)
        if self.decay == "param":
            p.sub_(before.mul_(omega), alpha=lr)
        elif self.decay == "ema":
            theta_hat = state["param_avg"] / (1 - self.hyper["beta2"] ** state["step"].item())
            p.sub_(theta_hat.mul_(omega), alpha=lr)


_FOCUS_HYPER = dict(beta1=0.9, beta2=0.9, gamma=0.2)
TOY_OPTIMIZERS: dict[str, ToyOptimizer] = {
    "adam": ToyOptimizer("Adam", _adam_rule, ("exp_avg", "exp_avg_sq"),
                         dict(beta1=0.9, beta2=0.999, eps=1e-8)),
    "signum": ToyOptimizer("Signum", _single_tensor_signum, ("exp_avg",), dict(momentum=0.9)),
    "focus": ToyOptimizer("FOCUS", _single_tensor_focus, ("exp_avg", "param_avg"),
                          dict(_FOCUS_HYPER, decay_order="official")),
    "focus-official": ToyOptimizer("FOCUS (decay by EMA)", _single_tensor_focus, ("exp_avg", "param_avg"),
                                   dict(_FOCUS_HYPER, decay_order="official"), decay="ema"),
    "foco": ToyOptimizer("foco", _single_tensor_foco, Foco.state_names, _FOCUS_HYPER, decay="rule",
                         make_state=lambda p: Foco([p])._init_state(p)),
    "lion": ToyOptimizer("Lion", _single_tensor_lion, ("exp_avg",), dict(beta1=0.9, beta2=0.99)),
}
COLORS = {"adam": "#4c72b0", "signum": "#55a868", "focus": "#c44e52", "focus-official": "#dd8452",
          "foco": "#8172b3", "lion": "#937860"}


def simulate(name: str, p0: torch.Tensor, a, sigma, omega, lr: float, steps: int,
             generator: torch.Generator) -> torch.Tensor:
    """Run one toy optimizer from ``p0`` (2, cells, replicates) and return the final loss (cells, reps).

    ``a``, ``sigma``, ``omega`` are (cells, 1) tensors or floats; a "rule"-decay optimizer needs one omega.
    """
    toy = TOY_OPTIMIZERS[name]
    if toy.decay == "rule":
        values = torch.as_tensor(omega).unique()
        if values.numel() != 1:
            raise ValueError(f"{name} applies weight decay inside its rule: call it with one omega per "
                             f"block (got {values.numel()} values); sweep() groups cells accordingly.")
        omega = float(values)
    p = p0.clone()
    state = toy.init_state(p)
    for _ in range(steps):
        toy.step(p, noisy_grad(p, a, sigma, generator), state, lr, omega)
    return valley_loss(p, a)


# ----------------------------------------------------------------------------------------------- the sweep
def make_cells(a, omega, sigma) -> dict[str, torch.Tensor]:
    """Flat per-cell condition tensors (broadcast to a common length; float64 so the CSV states the exact
    condition, the simulation runs in float32)."""
    a, omega, sigma = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64).flatten()
                                                for v in (a, omega, sigma)))
    return {"a": a, "omega": omega, "sigma": sigma}


def _blocks(name: str, omega: torch.Tensor, block_cells: int) -> list[torch.Tensor]:
    """Cell index blocks of at most ``block_cells``; one omega per block for rule-decay optimizers."""
    groups = ([torch.nonzero(omega == v).flatten() for v in omega.unique()]
              if TOY_OPTIMIZERS[name].decay == "rule" else [torch.arange(omega.numel())])
    return [idx for group in groups for idx in group.split(block_cells)]


def sweep(cells: dict[str, torch.Tensor], optimizers, lrs: list[float], *, replicates: int, steps: int,
          seed: int = 0, block_elements: int = 1 << 16, workers: int = 1,
          progress: bool = False) -> dict[str, dict]:
    """Final-loss statistics for every optimizer, learning rate and cell of ``cells`` (from ``make_cells``).

    Returns ``{name: {"mean": (n_lr, n_cells), "stderr": (n_lr, n_cells)}}``. Start points and gradient
    noise depend only on the seed and the block, so optimizers and learning rates sharing a block see the
    same random numbers (common random numbers: their differences are less noisy than their scores).
    ``block_elements`` bounds the size of one state tensor: ~64k floats stay in cache and still amortise
    the per-call overhead. ``workers`` > 1 runs (optimizer, lr, block) tasks in that many single-threaded
    processes: on a busy machine torch's multi-threaded elementwise ops spend most of their time waiting
    for a descheduled thread (measured 40x slower than one thread at load 13 on 2 cores).
    """
    unknown = [name for name in optimizers if name not in TOY_OPTIMIZERS]
    if unknown:
        raise ValueError(f"unknown toy optimizer(s) {unknown}; choose from {sorted(TOY_OPTIMIZERS)}")
    from huggingface_hub.utils import tqdm

    n_cells = cells["sigma"].numel()
    block_cells = max(1, block_elements // (2 * replicates))
    plan = [(name, i, idx) for name in optimizers for idx in _blocks(name, cells["omega"], block_cells)
            for i in range(len(lrs))]
    tasks = [(name, lrs[i], *(cells[key][idx, None].float() for key in ("a", "sigma", "omega")),
              replicates, steps,
              seed * 1_000_003 + int(idx[0])) for name, i, idx in plan]
    out = {name: {"mean": torch.empty(len(lrs), n_cells), "stderr": torch.empty(len(lrs), n_cells)}
           for name in optimizers}
    if workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(workers, multiprocessing.get_context("spawn"),
                                   initializer=torch.set_num_threads, initargs=(1,))
        results = pool.map(_run_block, tasks)
    else:
        pool, results = None, map(_run_block, tasks)
    try:
        for (name, i, idx), (mean, stderr) in tqdm(zip(plan, results), total=len(plan), disable=not progress,
                                                   desc="valley"):
            out[name]["mean"][i, idx] = mean
            out[name]["stderr"][i, idx] = stderr
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return out


def _run_block(task) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and stderr over replicates of the final loss of one optimizer at one lr on a block of cells."""
    name, lr, a, sigma, omega, replicates, steps, block_seed = task
    p0 = INIT_SCALE * torch.randn(2, a.shape[0], replicates,
                                  generator=torch.Generator().manual_seed(block_seed))
    torch.set_flush_denormal(True)  # y -> 0 along the floor can reach denormals, slow on x86
    try:
        loss = simulate(name, p0, a, sigma, omega, lr, steps, torch.Generator().manual_seed(block_seed + 1))
    finally:
        torch.set_flush_denormal(False)  # torch's default (it has no getter to restore from)
    loss = torch.where(torch.isfinite(loss), loss, torch.inf)
    return loss.mean(dim=1), loss.std(dim=1) / math.sqrt(replicates)


def best_over_lr(results: dict[str, dict], lrs: list[float]) -> dict[str, dict[str, torch.Tensor]]:
    """Per optimizer and cell: the lowest mean final loss over learning rates, its stderr and lr."""
    best = {}
    for name, res in results.items():
        score, i = torch.nan_to_num(res["mean"], nan=torch.inf).min(dim=0)
        best[name] = {"score": score, "stderr": res["stderr"].gather(0, i[None])[0],
                      "lr": torch.tensor(lrs, dtype=torch.float64)[i]}
    return best


def winners(best: dict[str, dict]) -> list[str]:
    """Name of the optimizer with the lowest score, per cell."""
    names = list(best)
    return [names[k] for k in torch.stack([best[n]["score"] for n in names]).argmin(dim=0).tolist()]


# ------------------------------------------------------------------------------------------------ panels
@dataclasses.dataclass
class Panel:
    """One phase diagram: sigma on x, ``y`` ("a" with omega = ``fixed``, or "omega" with a = ``fixed``)."""

    y: str
    sigmas: list[float]
    ys: list[float]
    fixed: float

    def cells(self) -> dict[str, torch.Tensor]:
        """Flat cells, y-major: cell k is (ys[k // n_sigma], sigmas[k % n_sigma])."""
        ys, sigmas = (torch.tensor(v, dtype=torch.float64) for v in (self.ys, self.sigmas))
        y, s = torch.meshgrid(ys, sigmas, indexing="ij")
        return make_cells(y, self.fixed, s) if self.y == "a" else make_cells(self.fixed, y, s)


def make_panel(y: str, n_sigma: int, n_y: int) -> Panel:
    """The spec's axes at the given resolution: sigma in [0, 3]; a in logspace(-1, 3) at omega = 0.1
    (Fig. 2a) or omega in [0, 0.5] at a = 10 (Fig. 2b)."""
    if n_sigma < 1 or n_y < 1:
        raise ValueError(f"grid sizes must be positive, got n_sigma={n_sigma}, n_{y}={n_y}")
    if y == "a":
        a = torch.logspace(-1, 3, n_y, dtype=torch.float64).tolist()
        return Panel("a", _linspace(0, 3, n_sigma), a, 0.1)
    if y == "omega":
        return Panel("omega", _linspace(0, 3, n_sigma), _linspace(0, 0.5, n_y), 10.0)
    raise ValueError(f"panel y axis must be 'a' or 'omega', got {y!r}")


def _linspace(start: float, end: float, n: int) -> list[float]:
    return torch.linspace(start, end, n, dtype=torch.float64).tolist()


def summary_rows(panel: Panel, best: dict[str, dict]) -> list[dict]:
    """One CSV row per cell and optimizer: condition, best lr, its mean final loss and stderr, winner."""
    cells, won, rows = panel.cells(), winners(best), []
    for k, winner in enumerate(won):
        for name, b in best.items():
            rows.append(dict(panel=f"sigma_{panel.y}", sigma=cells["sigma"][k].item(), a=cells["a"][k].item(),
                             omega=cells["omega"][k].item(), optimizer=name, best_lr=b["lr"][k].item(),
                             mean_final_loss=b["score"][k].item(), stderr=b["stderr"][k].item(),
                             winner=winner))
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def plot_winner_map(panel: Panel, best: dict[str, dict], path: Path, title: str) -> None:
    """Categorical image of the winner per (sigma, y) cell, with a legend of the optimizers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    names = list(best)
    codes = torch.tensor([names.index(w) for w in winners(best)]).reshape(len(panel.ys), len(panel.sigmas))
    log_y = panel.y == "a"
    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    ax.pcolormesh(_edges(panel.sigmas), _edges(panel.ys, log=log_y), codes.numpy(),
                  cmap=ListedColormap([COLORS[n] for n in names]), vmin=-0.5, vmax=len(names) - 0.5)
    if log_y:
        ax.set_yscale("log")
        ax.set_ylabel(f"sharpness a   (weight decay omega = {panel.fixed:g})")
    else:
        ax.set_ylabel(f"weight decay omega   (sharpness a = {panel.fixed:g})")
    ax.set_xlabel("gradient noise sigma")
    ax.set_title(title, fontsize=9)
    ax.legend(handles=[Patch(color=COLORS[n], label=TOY_OPTIMIZERS[n].label) for n in names],
              loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _edges(centers: list[float], log: bool = False) -> list[float]:
    """Cell edges midway between centers (in log space for a log axis), extended half a step outward."""
    v = torch.tensor(centers, dtype=torch.float64)
    v = v.log() if log else v
    if v.numel() == 1:
        edges = torch.stack((v - 0.5, v + 0.5))
    else:
        mid = (v[1:] + v[:-1]) / 2
        edges = torch.cat((2 * v[:1] - mid[:1], mid, 2 * v[-1:] - mid[-1:]))
    return (edges.exp() if log else edges).tolist()


# ---------------------------------------------------------------------------------------------- spot check
# The spec's table: (a, omega, sigma) -> best-lr mean final loss of adam, signum, focus (50 replicates).
SPEC_SPOT_VALUES = {
    (10.0, 0.1, 0.0): (-0.650, -0.475, -0.463),
    (10.0, 0.1, 2.0): (-0.211, -0.241, -0.237),
    (10.0, 0.1, 3.0): (-0.158, -0.187, -0.194),
    (0.1, 0.1, 2.5): (-0.397, -0.674, -0.640),
    (1000.0, 0.1, 1.0): (-0.095, -0.080, -0.077),
    (1000.0, 0.1, 3.0): (-0.0450, -0.0462, -0.0464),
}
SPOT_OPTIMIZERS = ("adam", "signum", "focus")


# --------------------------------------------------------------------------------------------------- CLI
# name: (n_sigma, n_a, n_omega, n_lr, replicates, steps). "spec" is the paper's grid; "default" the
# reduction that fits 15 min on 2 cores; "quick" a smoke test.
PRESETS = {
    "spec": (100, 96, 96, 20, 50, 1000),
    "default": (61, 49, 51, 20, 40, 1000),
    "quick": (7, 5, 5, 8, 8, 300),
}


def valley_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default",
                        help="grid resolution. spec: the paper's 100 sigma x 96 (a or omega) x 20 lr x "
                             "50 replicates x 1000 steps (4x the default's work). default: 61 sigma "
                             "(step 0.05) x 49 a (12 per decade) / 51 omega (step 0.01) x the spec's 20 "
                             "lr x 40 replicates x 1000 steps: 3 optimizers and both panels take ~7 "
                             "CPU-minutes (~4 min on 2 free cores; ~13 min on 2 cores shared at load 8). "
                             "quick: a smoke test. The --n-* flags override single axes.")
    for flag, help_ in (("--n-sigma", "sigma points in [0, 3]"), ("--n-a", "sharpness points in [0.1, 1000]"),
                        ("--n-omega", "weight-decay points in [0, 0.5]"),
                        ("--n-lr", "lr points in [1e-3, 1]"), ("--replicates", "replicates per cell"),
                        ("--steps", "steps per run")):
        parser.add_argument(flag, type=int, default=None, help=help_ + " (overrides --preset)")
    parser.add_argument("--panels", nargs="+", choices=("a", "omega"), default=["a", "omega"],
                        help="a: Fig. 2a, winner per (sigma, a) at omega = 0.1; omega: Fig. 2b, winner per "
                             "(sigma, omega) at a = 10")
    parser.add_argument("--optimizers", nargs="+", choices=sorted(TOY_OPTIMIZERS),
                        default=list(SPOT_OPTIMIZERS), help="toy optimizers to compare (see hf_foco.valley)")
    parser.add_argument("--out-dir", type=Path, default=Path("valley_out"), help="where the CSV and PNGs go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="single-threaded worker processes (default: one per CPU core)")
    parser.add_argument("--spot-check", action="store_true",
                        help="only run the spec's table cells (with the chosen lr/replicates/steps) and "
                             "print them beside the spec's values")


def valley_run(args: argparse.Namespace) -> int:
    n_sigma, n_a, n_omega, n_lr, reps, steps = (
        preset if override is None else override for override, preset in zip(
            (args.n_sigma, args.n_a, args.n_omega, args.n_lr, args.replicates, args.steps),
            PRESETS["spec" if args.spot_check else args.preset], strict=True))
    if min(n_lr, steps, args.workers) < 1 or reps < 2:
        raise SystemExit(f"--n-lr, --steps and --workers must be >= 1 and --replicates >= 2 (for a stderr); "
                         f"got {n_lr}, {steps}, {args.workers}, {reps}")
    lrs = torch.logspace(-3, 0, n_lr, dtype=torch.float64).tolist()
    run = dict(replicates=reps, steps=steps, seed=args.seed, workers=args.workers)
    if args.spot_check:
        return _print_spot_check(args.optimizers, lrs, run)
    rows = []
    for y in args.panels:
        panel = make_panel(y, n_sigma, n_a if y == "a" else n_omega)
        start = time.perf_counter()
        best = best_over_lr(sweep(panel.cells(), args.optimizers, lrs, progress=True, **run), lrs)
        elapsed = time.perf_counter() - start
        plot_winner_map(panel, best, args.out_dir / f"valley_sigma_{y}.png",
                        f"winner: best-of-{n_lr}-lr mean final loss, {reps} replicates x {steps} steps")
        rows += summary_rows(panel, best)
        print(f"sigma x {y}: {len(panel.sigmas)} x {len(panel.ys)} cells, {n_lr} lr, {reps} replicates, "
              f"{steps} steps, {len(args.optimizers)} optimizers: {elapsed:.0f} s")
    write_csv(rows, args.out_dir / "valley.csv")
    print(f"wrote valley.csv and valley_sigma_{{{','.join(args.panels)}}}.png in {args.out_dir}")
    return 0


def _print_spot_check(optimizers, lrs, run) -> int:
    conditions = list(SPEC_SPOT_VALUES)
    best = best_over_lr(sweep(make_cells(*zip(*conditions, strict=True)), optimizers, lrs, **run), lrs)
    print("a, omega, sigma | " + " | ".join(f"{n}: mean±se @lr" for n in optimizers)
          + " | winner | spec (adam, signum, focus) | spec winner")
    won = winners(best)
    for k, (cond, spec) in enumerate(SPEC_SPOT_VALUES.items()):
        cols = [f"{best[n]['score'][k]:.4f}±{best[n]['stderr'][k]:.4f} @{best[n]['lr'][k]:.3g}"
                for n in optimizers]
        spec_winner = SPOT_OPTIMIZERS[min(range(3), key=spec.__getitem__)]
        print(f"{cond} | " + " | ".join(cols) + f" | {won[k]} | {spec} | {spec_winner}")
    return 0
