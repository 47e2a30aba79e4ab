"""Is the LLM loss a narrowing valley? Track the top Hessian eigenvalue (sharpness) along training.

FOCUS is motivated by a valley that narrows as training proceeds (see :mod:`hf_foco.valley`): if the LLM loss
behaves like that, the largest curvature along the trajectory should keep growing. The callback here
estimates it every ``every_n_steps`` steps by Lanczos on Hessian-vector products (double backward through
the loss of one fixed batch), and appends ``{"top_hessian_eigenvalue": λ, "top_hessian_eigenvalue_residual":
‖Hv − λv‖, "step": ...}`` to the Trainer's log history, so it lands in ``trainer_state.json`` next to the
losses. The residual says how far λ can be from a true eigenvalue: trust λ only where it is small beside λ.

Cost per measurement: one forward/backward with ``create_graph`` plus ``num_iterations + 1`` HVPs (each a
double backward) on ``batch_size`` rows, i.e. tens of training steps' worth of compute at the default 20
iterations; fewer iterations leave a residual that says λ is not converged. Measure every few hundred steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import TrainerCallback

from ..rundir import EIGENVALUE_KEY, RESIDUAL_KEY

DEFAULT_ITERATIONS = 20
DEFAULT_BATCH_SIZE = 4


def lanczos_top_eigenpair(matvec: Callable[[torch.Tensor], torch.Tensor], start: torch.Tensor,
                          num_iterations: int) -> tuple[float, float]:
    """(θ, ‖Aθ-vector − θ·vector‖): the largest Ritz value of symmetric ``matvec`` after ``num_iterations``
    Lanczos steps from ``start``, and the residual of its Ritz vector.

    Full reorthogonalisation (twice, against every earlier basis vector) keeps the basis orthonormal, so no
    ghost copies of converged eigenvalues appear; the basis is ``num_iterations`` vectors of ``start``'s size.
    The residual is computed with one more product, not from the recurrence, so it is a check: some
    eigenvalue of the operator lies within it of θ. The run stops early on an invariant subspace (then θ
    is exact). Non-finite products give (nan, nan).
    """
    basis = torch.empty(num_iterations, start.numel(), dtype=torch.float32, device=start.device)
    basis[0] = start.float() / start.float().norm()
    alphas, betas = [], []
    for j in range(num_iterations):
        w = matvec(basis[j]).float()
        if not torch.isfinite(w).all():
            return math.nan, math.nan
        alphas.append(torch.dot(w, basis[j]).item())
        for _ in range(2):  # classical Gram-Schmidt against the whole basis, twice ("twice is enough")
            w -= basis[: j + 1].T @ (basis[: j + 1] @ w)
        beta = w.norm().item()
        if j + 1 == num_iterations or beta <= 1e-10 * max(abs(a) for a in alphas):
            break
        betas.append(beta)
        basis[j + 1] = w / beta
    m = len(alphas)
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if m > 1:
        off = torch.tensor(betas[: m - 1], dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(tridiagonal)
    ritz = basis[:m].T @ vectors[:, -1].to(basis)
    residual = (matvec(ritz).float() - values[-1].item() * ritz).norm().item()
    return values[-1].item(), residual


def top_hessian_eigenpair(model: torch.nn.Module, batch: dict[str, Any], num_iterations: int = DEFAULT_ITERATIONS,
                          seed: int = 0) -> tuple[float, float]:
    """(largest, i.e. most positive, eigenvalue of the Hessian of ``model(**batch).loss`` w.r.t. the trainable
    weights, its residual ‖Hv − λv‖) by Lanczos on Hessian-vector products (:func:`lanczos_top_eigenpair`).

    Lanczos, not power iteration: power iteration finds the eigenvalue of largest *magnitude*, and when that
    one is negative (common early in training, and for Signum) a shifted second pass converges slowly
    towards ~0; Lanczos converges to both ends of the spectrum at once, in fewer products. Runs in eval mode
    (no dropout: the same function at every measurement) and with the math attention kernel, since the
    fused SDPA kernels have no double backward. Leaves ``.grad`` untouched.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            grads = torch.autograd.grad(model(**batch).loss, params, create_graph=True)

            def hvp(v: torch.Tensor) -> torch.Tensor:
                pieces = [x.view_as(p).to(p.dtype) for x, p in zip(v.split([p.numel() for p in params]), params)]
                hv = torch.autograd.grad(grads, params, grad_outputs=pieces, retain_graph=True)
                return torch.cat([h.reshape(-1).float() for h in hv])

            generator = torch.Generator().manual_seed(seed)
            start = torch.randn(sum(p.numel() for p in params), generator=generator).to(params[0].device)
            return lanczos_top_eigenpair(hvp, start, num_iterations)
    finally:
        model.train(was_training)


class HessianEigenvalueCallback(TrainerCallback):
    """Logs ``top_hessian_eigenvalue`` and its residual at every step that is a multiple of ``every_n_steps`` (see module doc).

    The batch is fixed for the whole run so that successive measurements differ only by the weights: pass
    one, or leave it out and the first ``batch_size`` rows of the first eval batch are kept at the first
    evaluation (callbacks are not handed the eval set before that). Measurements start once the batch is
    known: set ``eval_on_start`` to get step 0.
    """

    def __init__(self, every_n_steps: int = 100, num_iterations: int = DEFAULT_ITERATIONS,
                 batch_size: int = DEFAULT_BATCH_SIZE, batch: dict[str, Any] | None = None, seed: int = 0):
        if every_n_steps < 1 or num_iterations < 1 or batch_size < 1:
            raise ValueError("HessianEigenvalueCallback needs every_n_steps, num_iterations and batch_size >= 1; "
                             f"got {every_n_steps}, {num_iterations}, {batch_size}.")
        self.every_n_steps, self.num_iterations, self.batch_size, self.seed = (
            every_n_steps, num_iterations, batch_size, seed)
        self.batch = None if batch is None else self._keep(batch)
        self._measured_step: int | None = None

    def _keep(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        if "input_ids" not in batch:
            raise ValueError(f"HessianEigenvalueCallback needs a batch with input_ids; got keys {sorted(batch)}.")
        kept = {k: v[:self.batch_size].detach() for k, v in batch.items() if isinstance(v, torch.Tensor)}
        kept.setdefault("labels", kept["input_ids"])  # causal LM: the model shifts the labels itself
        return kept

    def _maybe_measure(self, state, model) -> None:
        step = state.global_step
        if self.batch is None or step % self.every_n_steps or step == self._measured_step:
            return
        device = next(model.parameters()).device
        batch = {k: v.to(device) for k, v in self.batch.items()}
        value, residual = top_hessian_eigenpair(model, batch, self.num_iterations, self.seed)
        state.log_history.append({EIGENVALUE_KEY: value, RESIDUAL_KEY: residual, "step": step})
        self._measured_step = step

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._maybe_measure(state, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._maybe_measure(state, model)

    def on_evaluate(self, args, state, control, model=None, eval_dataloader=None, **kwargs):
        if self.batch is None and eval_dataloader is not None:
            self.batch = self._keep(next(iter(eval_dataloader)))
        self._maybe_measure(state, model)
