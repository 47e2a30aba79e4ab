"""K-FAC and FOP as ``torch.optim.Optimizer`` classes for transformers models.

Both precondition every ``nn.Linear`` / ``Conv1D`` found by :func:`~.curvature.find_layers` with its K-FAC
Fisher F = A ⊗ G (:mod:`.curvature`), and train every other parameter (embeddings, the tied lm_head,
LayerNorms) with AdamW, as the FOP paper does for ViT. One machinery serves both: ``kfac`` is FOP with
β* = 0 and no half-batch split (FOP's arithmetic: :mod:`.fop`).

Outer update (the paper's code): SGD with momentum 0.9 on the preconditioned direction u, then decoupled
weight decay. The weight decay of the K-FAC groups is rescaled by ``adamw_lr / lr`` so every parameter
shrinks at the AdamW baseline's per-step rate (the scheduler scales both groups' learning rates alike).
``max_update_norm`` optionally clips the total norm of u over all K-FAC layers (the paper clips the
preconditioned update).

How a trainer drives them (the interfaces of :mod:`hf_foco.optim.registry`; FocoTrainer implements them):
:meth:`attach` the prepared model; at the first micro-batch of a step whose :attr:`curvature_due` is true,
:meth:`update_curvature` (factors from labels sampled from the model, averaged over data-parallel ranks,
folded into the running averages every ``update_freq`` steps); for FOP, before ``step()``,
:meth:`FOP.receive_half_batch_difference` with g1 − g2 of its :attr:`half_batch_params`. A plain loop can
do the same by hand.

State (factors, inverses, momentum, AdamW moments, the last β*/η*) is tensors in ``self.state``, so
``optimizer.pt`` loads with ``weights_only=True``. FSDP and DeepSpeed are refused: they shard or flatten
the weight matrices the Kronecker factors act on.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.optim.adamw import adamw

from ...distributed import all_reduce_mean, refuse_sharding
from ...tensorlist import dot
from ..base import closure_loss
from ..validation import check_betas, check_lr, check_unit_interval, check_weight_decay
from .curvature import DEFAULT_EXCLUDE, KFACLayer, damped_inverses, find_layers, sample_fisher_factors, unwrap
from .fop import fop_update

# Kept in fp32 whatever the parameter dtype (bf16 factors give broken Cholesky factors).
FP32_STATE = ("A", "G", "A_inv", "G_inv", "bias_inv", "momentum_buffer", "beta", "eta")


def _grad_or_zeros(p: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros_like(p) if grad is None else grad


class _KroneckerOptimizer(torch.optim.Optimizer):
    """Shared machinery of FOP and K-FAC."""

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

    @property
    def curvature_due(self) -> bool:
        """True on the steps whose curvature is refreshed: every ``update_freq`` optimizer steps from the first."""
        state = self.state.get(self.layers[0].weight, {})
        return (int(state["step"]) if "step" in state else 0) % self.update_freq == 0

    def update_curvature(self, inputs: Mapping[str, object]) -> None:
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

    # -- the update -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            if not group["kfac"]:
                self._adamw(group)
        self._kfac_step()
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
                                   f"{who.lower()}), or call optimizer.update_curvature(inputs) before step().")
            updates.append((layer, self._direction(layer, state)))
            state["step"] = state.get("step", torch.tensor(0.0)) + 1
        if self.max_update_norm is not None and updates:
            norm = torch.sqrt(sum(dot(u, u) for _, u in updates))
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
    (η* ∈ [0, eta_max]). Before each ``step()`` it needs g1 − g2, the difference of the two half-batch
    gradients of :attr:`half_batch_params` (:meth:`receive_half_batch_difference`; FocoTrainer hands it over).
    """

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
        self._difference: dict[torch.Tensor, torch.Tensor] = {}

    @property
    def half_batch_params(self) -> list[nn.Parameter]:
        """The parameters whose half-batch gradient difference FOP needs: those of its K-FAC layers."""
        return [p for layer in self.layers for p in layer.params()]

    def receive_half_batch_difference(self, diffs: Sequence[torch.Tensor | None]) -> None:
        """g1 − g2 for each of :attr:`half_batch_params` (None: no gradient), used by the next ``step()``."""
        params = self.half_batch_params
        if len(diffs) != len(params):
            raise ValueError(f"FOP expects {len(params)} half-batch differences (one per half_batch_params), "
                             f"got {len(diffs)}.")
        self._difference = {p: d for p, d in zip(params, diffs) if d is not None}

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        try:
            return super().step(closure)
        finally:
            self._difference = {}  # each difference serves exactly one step (or one skipped step)

    def _direction(self, layer: KFACLayer, state: dict) -> list[torch.Tensor]:
        if not all(p in self._difference or p.grad is None for p in layer.params()):
            raise RuntimeError("FOP needs the difference of two half-batch gradients before every step: train with "
                               "FocoTrainer (--optim fop), or call optimizer.receive_half_batch_difference(diffs) "
                               "before step().")
        g_avg = [_grad_or_zeros(p, p.grad) for p in layer.params()]
        g_diff = [_grad_or_zeros(p, self._difference.get(p)) for p in layer.params()]
        update, beta, eta = fop_update(layer, g_avg, g_diff, state, self.beta_max, self.eta_max)
        state["beta"], state["eta"] = beta, eta
        return update
