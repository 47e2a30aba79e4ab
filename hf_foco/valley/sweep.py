"""The sweep: every toy optimizer at every learning rate on every cell of a grid, vectorised over cells and
replicates, and the score per cell (final loss without the decay term, mean over replicates, minimum over
learning rates; the winner is the optimizer with the lowest score, non-finite final losses counting as +inf).
"""

from __future__ import annotations

import math

import torch

from .landscape import INIT_SCALE
from .toys import TOY_OPTIMIZERS, simulate


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
    processes: on a busy machine torch's multi-threaded elementwise ops on these small tensors spend most of
    their time waiting for a descheduled thread, which single-threaded workers never do.
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
