"""FOP (Lu & Armour, AAAI-26, arXiv 2508.13898) and K-FAC for transformers models.

Both precondition every ``nn.Linear`` / ``Conv1D`` found by :func:`hf_foco.optim.kfac.find_layers` with its
K-FAC Fisher F = A ⊗ G, and train every other parameter (embeddings, the tied lm_head, LayerNorms) with
AdamW, as the FOP paper does for ViT. One machinery serves both: ``kfac`` is FOP with β* = 0 and no split.

FOP, per layer (weight and bias share one β* and one η*), from the two half-batch gradients g1, g2::

    g_avg = (g1 + g2)/2 ;  g_diff = g1 − g2
    s  = <g_diff, F g_avg> / <g_avg, F g_avg>            (0 when the denominator is 0)
    g⊥ = g_diff − s·g_avg                                 (Fisher-orthogonal to g_avg)
    β* = clamp(<g_avg, F⁻¹ g⊥> / <g⊥, F⁻¹ g⊥>, ±beta_max)
    g_comb = g_avg + β*·g⊥
    η* = clamp(<g_avg, F⁻¹ g_comb> / <g_comb, F⁻¹ g_comb>, 0, eta_max)
    u  = η*·F⁻¹ g_comb

F·v uses the undamped running-average factors, F⁻¹·v the damped inverses.

Conventions (the paper's text and its code differ; we chose):

* η* uses g_tot = g_avg, not the official code's g_tot = g1 + g2 = 2·g_avg. With β* = 0 this gives η* = 1,
  so FOP with ``beta_max=0`` *is* K-FAC at the same ``lr`` (tested), the learning rate keeps its K-FAC
  meaning, and one LR sweep transfers between ``kfac`` and ``fop``. (The official convention doubles
  every step and would need half the LR.)
* β* is clamped to [−0.5, 0.5] (the official value): at β* = ±0.5 with s = 0, g_comb is one half-batch
  gradient alone, so the combination never extrapolates beyond the two measured gradients.
* η* is clamped to [0, 2]: never a step against the combined direction, at most twice K-FAC's step.

Outer update (the paper's code): SGD with momentum 0.9 on u, then decoupled weight decay. The weight
decay of the K-FAC groups is rescaled by ``adamw_lr / lr`` so every parameter shrinks at the AdamW
baseline's per-step rate (the scheduler scales both groups' learning rates alike). ``max_update_norm``
optionally clips the total norm of u over all K-FAC layers (the paper clips the preconditioned update).

Gradients. :meth:`training_step` (called by FocoTrainer instead of its own) runs each half of the
micro-batch through its own forward and ``accelerator.backward``, accumulating each half in its own buffer
by swapping ``p.grad`` (so DDP averages each half over ranks in its own all-reduce, at no extra cost), and
leaves ``p.grad = half1 + half2``, the full-batch gradient the Trainer clips and logs. Clipping multiplies
g_avg by c but not g_diff; then s → s/c, g⊥ is unchanged, β* → c·β*, g_comb → c·g_comb and η* is unchanged,
so the step is exactly c times the unclipped FOP step (tested). K-FAC factors are refreshed every
``update_freq`` optimizer steps on the first micro-batch, from labels sampled from the model, and averaged
over ranks.

State (factors, inverses, momentum, AdamW moments, the last β*/η*) is tensors in ``self.state``, so
``optimizer.pt`` loads with ``weights_only=True``. FSDP and DeepSpeed are refused: they shard or flatten
the weight matrices the Kronecker factors act on.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.optim.adamw import adamw

from .base import closure_loss
from .kfac import (
    DEFAULT_EXCLUDE,
    KFACLayer,
    all_reduce_mean,
    damped_inverses,
    find_layers,
    sample_fisher_factors,
    unwrap,
)
from .validation import check_betas, check_lr, check_unit_interval, check_weight_decay

# Kept in fp32 whatever the parameter dtype (bf16 factors give broken Cholesky factors).
FP32_STATE = ("A", "G", "A_inv", "G_inv", "bias_inv", "momentum_buffer", "beta", "eta")


def _dot(xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> torch.Tensor:
    return sum((x.float() * y.float()).sum() for x, y in zip(xs, ys))


def _grad_or_zeros(p: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros_like(p) if grad is None else grad


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(num))


def fisher_orthogonal_component(layer: KFACLayer, g_avg, g_diff, a: torch.Tensor, g: torch.Tensor):
    """g⊥ = g_diff − s·g_avg with s chosen so that <g⊥, F g_avg> = 0 (F = A ⊗ G, undamped)."""
    f_avg = layer.kron_apply(g_avg, a, g)
    s = _safe_ratio(_dot(g_diff, f_avg), _dot(g_avg, f_avg))
    return [d.float() - s * x.float() for d, x in zip(g_diff, g_avg)]


def fop_update(layer: KFACLayer, g_avg, g_diff, state: dict, beta_max: float, eta_max: float):
    """(u, β*, η*) for one layer, u = η*·F⁻¹(g_avg + β*·g⊥); see the module docstring."""
    g_perp = fisher_orthogonal_component(layer, g_avg, g_diff, state["A"], state["G"])
    p_avg = layer.kron_apply(g_avg, state["A_inv"], state["G_inv"], state["bias_inv"])
    p_perp = layer.kron_apply(g_perp, state["A_inv"], state["G_inv"], state["bias_inv"])
    aa, ap, pp = _dot(g_avg, p_avg), _dot(g_avg, p_perp), _dot(g_perp, p_perp)
    beta = _safe_ratio(ap, pp).clamp(-beta_max, beta_max)
    eta = _safe_ratio(aa + beta * ap, aa + 2 * beta * ap + beta * beta * pp).clamp(0.0, eta_max)
    return [eta * (x + beta * y) for x, y in zip(p_avg, p_perp)], beta, eta


def split_in_halves(inputs: dict) -> tuple[tuple[dict, float], tuple[dict, float]]:
    """The micro-batch cut in two along dim 0, each half with its share of the examples.

    Anything without the batch dimension (scalars, non-tensors) goes to both halves. Rule for an odd
    micro-batch (the last, short batch of an epoch without ``dataloader_drop_last``): halves of n//2 and
    n − n//2 examples, each loss weighted by its share, so the full-batch gradient stays exact and g1 − g2
    is off by at most one example's weight. A micro-batch of one example cannot be split.
    """
    sizes = [v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor) and v.dim() > 0]
    if not sizes:
        raise ValueError("FOP could not find a batch dimension in the inputs (no tensor with dim >= 1).")
    n = sizes[0]
    if n < 2:
        raise ValueError(f"FOP splits every micro-batch into two halves, but this one holds {n} example: use "
                         "per_device_train_batch_size >= 2 (even) and --dataloader_drop_last true.")

    def cut(part: slice) -> dict:
        return {k: v[part] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v
                for k, v in inputs.items()}

    return (cut(slice(0, n // 2)), (n // 2) / n), (cut(slice(n // 2, n)), (n - n // 2) / n)


def _backward(trainer, model, inputs, num_items_in_batch, share: float = 1.0) -> torch.Tensor:
    """Trainer.training_step's loss scaling and backward, for a piece holding ``share`` of a micro-batch."""
    with trainer.compute_loss_context_manager():
        loss = trainer.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
    if trainer.args.n_gpu > 1:
        loss = loss.mean()
    scaled = getattr(trainer, "loss_is_scaled_for_ga", None)
    if scaled is None:
        scaled = (trainer.model_accepts_loss_kwargs and num_items_in_batch is not None) or \
            trainer.compute_loss_func is not None
    if not scaled:  # a mean over the piece: weigh it by the piece's share of the micro-batch
        loss = loss * share / trainer.current_gradient_accumulation_steps
    trainer.accelerator.backward(loss)
    return loss.detach()


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def sharding_in_use(model: nn.Module | None = None) -> str | None:
    """``"DeepSpeed"`` or ``"FSDP"`` when ``model`` is sharded, or will be by the launcher (accelerate launch
    exports ACCELERATE_USE_DEEPSPEED / ACCELERATE_USE_FSDP); None otherwise."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED") or type(model).__name__ == "DeepSpeedEngine":
        return "DeepSpeed"
    if _env_flag("ACCELERATE_USE_FSDP") or type(model).__name__ == "FullyShardedDataParallel" or (
            model is not None and any(type(p).__name__ == "DTensor" for p in model.parameters())):
        return "FSDP"
    return None


_SHARDING_REASONS = {"DeepSpeed": "DeepSpeed hands the optimizer flattened parameter shards",
                     "FSDP": "FSDP shards the weight matrices into DTensors"}


def refuse_sharding(model: nn.Module, who: str) -> None:
    """Raise when the model is (or will be) FSDP-sharded or handled by DeepSpeed."""
    backend = sharding_in_use(model)
    if backend:
        raise ValueError(f"{who} preconditions whole weight matrices with Kronecker factors, but "
                         f"{_SHARDING_REASONS[backend]}. Train it with plain data parallelism (accelerate launch "
                         "--multi_gpu, no FSDP/DeepSpeed config) or choose an elementwise optimizer such as foco or "
                         "adamw.")


class _KroneckerOptimizer(torch.optim.Optimizer):
    """Shared machinery of FOP and K-FAC; subclasses set ``split_batch``."""

    split_batch = False

    def __init__(self, params, model: nn.Module, *, lr, momentum, adamw_lr, betas, eps, weight_decay, damping,
                 factor_ema, update_freq, max_update_norm, exclude):
        who = type(self).__name__
        if not isinstance(model, nn.Module):
            raise TypeError(f"{who} hooks model layers: pass model=<the nn.Module being trained>.")
        check_lr(lr)
        if lr <= 0:
            raise ValueError(f"Invalid learning rate lr={lr!r}: {who} needs lr > 0.")
        check_lr(adamw_lr)
        check_unit_interval("momentum", momentum)
        check_betas(betas)
        check_weight_decay(weight_decay)
        if not damping > 0:
            raise ValueError(f"Invalid damping={damping!r}: it must be > 0 (the factors are singular without it).")
        if not 0 < factor_ema <= 1:
            raise ValueError(f"Invalid factor_ema={factor_ema!r}: the weight of a fresh factor must be in (0, 1].")
        if not (isinstance(update_freq, int) and update_freq >= 1):
            raise ValueError(f"Invalid update_freq={update_freq!r}: refresh the factors every k >= 1 steps.")
        if max_update_norm is not None and not max_update_norm > 0:
            raise ValueError(f"Invalid max_update_norm={max_update_norm!r}: use a positive number or None.")
        refuse_sharding(model, who)
        params = [{**item, "params": list(item["params"])} if isinstance(item, dict) else item for item in params]
        given = {id(p) for item in params for p in (item["params"] if isinstance(item, dict) else [item])}
        # Only layers whose parameters this optimizer owns (a caller may hand over a subset).
        self.layers = [layer for layer in find_layers(model, exclude) if all(id(p) in given for p in layer.params())]
        if not self.layers:
            raise ValueError(f"{who} found no nn.Linear / Conv1D layer to precondition (exclude={tuple(exclude)}).")
        self.damping, self.factor_ema, self.update_freq = damping, factor_ema, update_freq
        self.max_update_norm = max_update_norm
        kfac_ids = {id(p) for layer in self.layers for p in layer.params()}
        defaults = dict(lr=lr, momentum=momentum, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        kfac=False)
        super().__init__(self._split_groups(params, kfac_ids, lr, adamw_lr, weight_decay), defaults)
        self._kfac_params = [p for layer in self.layers for p in layer.params()]
        self._halves: dict[torch.Tensor, list] = {}
        self._cycle_open = False
        self.attach(model)

    @staticmethod
    def _split_groups(params, kfac_ids: set[int], lr, adamw_lr, weight_decay) -> list[dict]:
        """Each incoming group becomes a K-FAC group (lr, rescaled decay) and an AdamW group (adamw_lr)."""
        groups = params
        if groups and not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        out = []
        for group in groups:
            plist = group["params"]
            names = group.get("param_names")
            wd = group.get("weight_decay", weight_decay)
            for is_kfac in (True, False):
                keep = [i for i, p in enumerate(plist) if (id(p) in kfac_ids) == is_kfac]
                if not keep:
                    continue
                new = {**group, "params": [plist[i] for i in keep], "kfac": is_kfac,
                       "lr": lr if is_kfac else adamw_lr, "weight_decay": wd * adamw_lr / lr if is_kfac else wd}
                if names is not None:
                    new["param_names"] = [names[i] for i in keep]
                out.append(new)
        return out

    @staticmethod
    def _process_value_according_to_param_policy(param, value, param_id, param_groups, key=None):
        if key in FP32_STATE:
            return value.to(device=param.device, dtype=torch.float32)
        return torch.optim.Optimizer._process_value_according_to_param_policy(
            param, value, param_id, param_groups, key)

    # -- wiring ---------------------------------------------------------------------------------------------

    def attach(self, model: nn.Module) -> None:
        """Resolve the preconditioned layers by module name in the (prepared, possibly DDP-wrapped) model."""
        who = type(self).__name__
        refuse_sharding(model, who)
        if self.split_batch and isinstance(model, nn.parallel.DistributedDataParallel) and \
                model.gradient_as_bucket_view:
            raise ValueError(f"{who} swaps p.grad between two half-batch buffers, which DDP's "
                             "gradient_as_bucket_view=True forbids: leave gradient_as_bucket_view off.")
        inner = unwrap(model)
        modules = dict(inner.named_modules())
        for layer in self.layers:
            module = modules.get(layer.name)
            if module is None or module.weight is not layer.weight:
                raise RuntimeError(f"{who}: layer {layer.name!r} of the prepared model no longer holds the "
                                   "parameter the optimizer was built with; build the optimizer from the same "
                                   "model object that is trained (and do not re-wrap or shard it afterwards).")
            layer.module = module
        self._model = inner

    def _steps_done(self) -> int:
        state = self.state.get(self.layers[0].weight, {})
        return int(state["step"]) if "step" in state else 0

    def update_curvature(self, inputs: dict) -> None:
        """Fold fresh factors from ``inputs`` (labels sampled from the model) into the running averages,
        averaged over data-parallel ranks, and recompute the damped inverses."""
        fresh = sample_fisher_factors(self._model, self.layers, inputs)
        tensors = [t for layer in self.layers for t in fresh[layer.name]]
        all_reduce_mean(tensors)
        if not all(torch.isfinite(t).all() for t in tensors):
            return  # a diverged batch: keep the last good factors (identically on every rank)
        for layer in self.layers:
            state = self.state[layer.weight]
            a, g = fresh[layer.name]
            if "A" in state:
                state["A"].lerp_(a, self.factor_ema)
                state["G"].lerp_(g, self.factor_ema)
            else:
                state["A"], state["G"] = a, g
            state["A_inv"], state["G_inv"], state["bias_inv"] = damped_inverses(state["A"], state["G"], self.damping)

    def training_step(self, trainer, model: nn.Module, inputs: dict, num_items_in_batch=None) -> torch.Tensor:
        """FocoTrainer's training step for this optimizer: curvature refresh, then forward(s)/backward(s)."""
        model.train()
        inputs = trainer._prepare_inputs(inputs)
        if not self._cycle_open:
            self._cycle_open = True
            if self._steps_done() % self.update_freq == 0:
                self.update_curvature(inputs)
        if not self.split_batch:
            return _backward(trainer, model, inputs, num_items_in_batch)
        loss = 0.0
        for index, (half, share) in enumerate(split_in_halves(inputs)):
            for p in self._kfac_params:
                p.grad = self._halves.setdefault(p, [None, None])[index]
            loss = loss + _backward(trainer, model, half, num_items_in_batch, share)
            for p in self._kfac_params:
                self._halves[p][index] = p.grad
        for p in self._kfac_params:
            first, second = self._halves[p]
            p.grad = second if first is None else first if second is None else first + second
        return loss

    def skip_step(self) -> None:
        """Drop this step's half-batch gradients (the stability guard found the gradients non-finite and
        removed ``p.grad``, so the following ``step()`` changes nothing)."""
        self._halves.clear()

    # -- the update -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            if not group["kfac"]:
                self._adamw(group)
        self._kfac_step()
        self._halves.clear()
        self._cycle_open = False
        return loss

    def _adamw(self, group: dict) -> None:
        params = [p for p in group["params"] if p.grad is not None]
        for p in params:
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if not params:
            return
        states = [self.state[p] for p in params]
        beta1, beta2 = group["betas"]
        adamw(params, [p.grad for p in params], [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
              [], [s["step"] for s in states], amsgrad=False, beta1=beta1, beta2=beta2, lr=group["lr"],
              weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    def _direction(self, layer: KFACLayer, state: dict) -> list[torch.Tensor]:
        grads = [_grad_or_zeros(p, p.grad) for p in layer.params()]
        return layer.kron_apply(grads, state["A_inv"], state["G_inv"], state["bias_inv"])

    def _kfac_step(self) -> None:
        who = type(self).__name__
        group_of = {id(p): g for g in self.param_groups if g["kfac"] for p in g["params"]}
        updates = []
        for layer in self.layers:
            if layer.weight.grad is None:
                continue
            state = self.state[layer.weight]
            if "A_inv" not in state:
                raise RuntimeError(f"{who} has no curvature yet: train through FocoTrainer (--optim "
                                   f"{who.lower()}), or call optimizer.training_step(...) / update_curvature(inputs) "
                                   "before step().")
            updates.append((layer, self._direction(layer, state)))
            state["step"] = state.get("step", torch.tensor(0.0)) + 1
        if self.max_update_norm is not None and updates:
            norm = torch.sqrt(sum(_dot(u, u) for _, u in updates))
            scale = (self.max_update_norm / norm.clamp_min(1e-12)).clamp(max=1.0)
            updates = [(layer, [x * scale for x in u]) for layer, u in updates]
        for layer, update in updates:
            for p, u in zip(layer.params(), update):
                group = group_of[id(p)]
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    state["momentum_buffer"] = buf = u.clone()
                else:
                    buf.mul_(group["momentum"]).add_(u)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(buf.to(p.dtype), alpha=-group["lr"])


class KFAC(_KroneckerOptimizer):
    """K-FAC (Martens & Grosse 2015) on Linear/Conv1D layers, SGD-momentum outer step, AdamW elsewhere.

    Args:
        params: parameters or groups (the K-FAC / AdamW split is made by layer, inside).
        model: the module whose layers are preconditioned (FocoTrainer passes it).
        lr: step size η0 of the preconditioned update.
        momentum: SGD momentum on the preconditioned update.
        adamw_lr, betas, eps: AdamW for the parameters outside K-FAC layers.
        weight_decay: decoupled decay at the AdamW rate for every parameter (see the module docstring).
        damping: λ; A and G get √λ·π and √λ/π added before inversion.
        factor_ema: weight ρ of a fresh factor in the running average.
        update_freq: refresh factors and inverses every k optimizer steps.
        max_update_norm: clip the total norm of the preconditioned update over K-FAC layers (None: off).
        exclude: fnmatch patterns of module names left to AdamW.
    """

    def __init__(self, params, model: nn.Module, lr: float = 3e-3, momentum: float = 0.9, adamw_lr: float = 6e-4,
                 betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0, damping: float = 1e-2,
                 factor_ema: float = 0.05, update_freq: int = 10, max_update_norm: float | None = None,
                 exclude: Iterable[str] = DEFAULT_EXCLUDE):
        super().__init__(params, model, lr=lr, momentum=momentum, adamw_lr=adamw_lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, damping=damping, factor_ema=factor_ema, update_freq=update_freq,
                         max_update_norm=max_update_norm, exclude=exclude)


class FOP(_KroneckerOptimizer):
    """Fisher-Orthogonal Projection: K-FAC plus the Fisher-orthogonal part of the half-batch difference.

    Args: as :class:`KFAC`, plus ``beta_max`` (β* ∈ [−beta_max, beta_max]) and ``eta_max``
    (η* ∈ [0, eta_max]). Needs :meth:`training_step` (FocoTrainer calls it) for the half-batch gradients.
    """

    split_batch = True

    def __init__(self, params, model: nn.Module, lr: float = 3e-3, momentum: float = 0.9, adamw_lr: float = 6e-4,
                 betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0, damping: float = 1e-2,
                 factor_ema: float = 0.05, update_freq: int = 10, max_update_norm: float | None = None,
                 exclude: Iterable[str] = DEFAULT_EXCLUDE, beta_max: float = 0.5, eta_max: float = 2.0):
        if not beta_max >= 0 or not eta_max > 0:
            raise ValueError(f"Invalid beta_max={beta_max!r} / eta_max={eta_max!r}: need beta_max >= 0, eta_max > 0.")
        super().__init__(params, model, lr=lr, momentum=momentum, adamw_lr=adamw_lr, betas=betas, eps=eps,
                         weight_decay=weight_decay, damping=damping, factor_ema=factor_ema, update_freq=update_freq,
                         max_update_norm=max_update_norm, exclude=exclude)
        self.beta_max, self.eta_max = beta_max, eta_max

    def _direction(self, layer: KFACLayer, state: dict) -> list[torch.Tensor]:
        halves = [self._halves.get(p) for p in layer.params()]
        if any(h is None for h in halves):
            raise RuntimeError("FOP needs the two half-batch gradients its training_step produces: train with "
                               "FocoTrainer (--optim fop) or call optimizer.training_step(trainer, model, inputs) "
                               "before step().")
        g_avg = [_grad_or_zeros(p, p.grad) for p in layer.params()]
        g_diff = [2 * (_grad_or_zeros(p, a) - _grad_or_zeros(p, b)) for p, (a, b) in zip(layer.params(), halves)]
        update, beta, eta = fop_update(layer, g_avg, g_diff, state, self.beta_max, self.eta_max)
        state["beta"], state["eta"] = beta, eta
        return update
