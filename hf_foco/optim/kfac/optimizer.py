"""K-FAC and FOP as ``torch.optim.Optimizer`` classes for transformers models.

Both precondition every ``nn.Linear`` / ``Conv1D`` found by :func:`~.curvature.find_layers` with its K-FAC
Fisher F = A ⊗ G (:mod:`.curvature`), and train every other parameter (embeddings, the tied lm_head,
LayerNorms) with AdamW, as the FOP paper does for ViT. One machinery serves both: ``kfac`` is FOP with
β* = 0 and no half-batch split (FOP's arithmetic: :mod:`.fop`).

The defaults make K-FAC train a GPT-2, whose curvature moves fast early in training:

1. *Factors that track the model.* The residual stream of a freshly initialised transformer grows by
   orders of magnitude within its first steps, and G's scale falls with it; a slow running average would
   keep the initial factors and precondition every later step with them. So the factors start *dense*:
   ``dense_steps`` refreshes with ρ = 1, one per step, then a refresh every ``update_freq`` steps into a
   running average with weight ``factor_ema``.
2. *One learning rate.* ``normalize_update`` (default) rescales each layer's preconditioned update to RMS 1
   before the momentum average, so the K-FAC step has AdamW's scale, and the parameters outside K-FAC
   layers (embeddings, LayerNorms, the tied head) take the same ``lr``: ``adamw_lr=None`` means "the same
   as ``lr``", and ``--learning_rate`` moves the whole model. Raw, un-normalised updates
   (``normalize_update=False``: SGD momentum on F⁻¹g, the classic form) have another scale, so there
   ``adamw_lr`` must be given explicitly.
3. *Damping relative to the factors.* An absolute λ means nothing while the factors' scale moves, so with
   ``relative_damping`` (default) λ is relative to each factor's mean eigenvalue (trace / dim): √λ·tr(A)/dim
   on A and √λ·tr(G)/dim on G (:func:`~.curvature.damped_inverses`).
4. *The Fisher of the positions that carry loss.* A causal LM's last position has no target, so the sampled
   Fisher uses the positions the batch's labels mark (``loss_mask``).

``curvature_examples`` refreshes the factors from the first N examples of the batch only, for cost. How
K-FAC and FOP compare with AdamW on the nano model, and their step time, is in the README (Benchmarks; the
study ``recipes/studies/gpt2-nano-kfac.yaml``).

Outer update: momentum on the (normalised) preconditioned direction u, then decoupled weight decay. The
weight decay of the K-FAC groups is rescaled by ``adamw_lr / lr`` so every parameter shrinks at the AdamW
rate (1 with the shared lr). ``max_update_norm`` (raw mode only) clips the total norm of u over all
K-FAC layers (the paper clips the preconditioned update).

How a trainer drives them (the interfaces of :mod:`hf_foco.optim.registry`; FocoTrainer implements them):
:meth:`attach` the prepared model; at the first micro-batch of a step whose :attr:`curvature_due` is true,
:meth:`update_curvature` (factors from labels sampled from the model, averaged over data-parallel ranks,
folded into the running averages); for FOP, before ``step()``,
:meth:`FOP.receive_half_batch_difference` with g1 − g2 of its :attr:`half_batch_params`. A plain loop can
do the same by hand.

State (factors, inverses, momentum, AdamW moments, the last β*/η*) is tensors in ``self.state``, so
``optimizer.pt`` loads with ``weights_only=True``. FSDP and DeepSpeed are refused: they shard or flatten
the weight matrices the Kronecker factors act on.

Precision: the factor products, damped inverses and Kronecker products, and the sampled forward and
backward pass the factors come from, run in full fp32 (:func:`~.curvature.fp32_matmul`) whatever the
caller asked of TF32 (transformers enables it under bf16 + ``torch_compile``): TF32's 10-bit mantissa would
put errors of ~1e-3 into factors whose smallest eigenvalues the damping only just lifts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn

from ...distributed import all_reduce_mean, refuse_sharding
from ...tensorlist import dot
from ..base import adamw_step, closure_loss, split_groups
from ..state import check_state_kind
from ..validation import check_betas, check_lr, check_unit_interval, check_weight_decay
from .curvature import (
    DEFAULT_EXCLUDE,
    KFACLayer,
    causal_loss_mask,
    damped_inverses,
    find_layers,
    sample_fisher_factors,
    unwrap,
)
from .fop import fop_update

# Kept in fp32 whatever the parameter dtype (bf16 factors give broken Cholesky factors).
FP32_STATE = ("A", "G", "A_inv", "G_inv", "bias_inv", "momentum_buffer", "beta", "eta")


def _grad_or_zeros(p: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
    return torch.zeros_like(p) if grad is None else grad


class KFAC(torch.optim.Optimizer):
    """K-FAC (Martens & Grosse 2015) on Linear/Conv1D layers, SGD-momentum outer step, AdamW elsewhere.

    Args:
        params: parameters or groups (the K-FAC / AdamW split is made by layer, inside).
        model: the module whose layers are preconditioned (FocoTrainer passes it).
        lr: step size of the (normalised) preconditioned update, and of AdamW unless ``adamw_lr`` is given.
        momentum: momentum on the preconditioned update (an EMA when normalised, SGD momentum when raw).
        adamw_lr, betas, eps: AdamW for the parameters outside K-FAC layers (``adamw_lr=None``: ``lr``;
            required when ``normalize_update=False``).
        weight_decay: decoupled decay at the AdamW rate for every parameter (see the module docstring).
        damping: λ; relative to each factor's mean eigenvalue with ``relative_damping`` (default), else
            absolute with the π split (√λ·π on A, √λ/π on G).
        factor_ema: weight ρ of a fresh factor in the running average after the dense start.
        update_freq: refresh factors and inverses every k optimizer steps after the dense start.
        dense_steps: refresh every step with ρ = 1 for this many first steps (the factors move fast early).
        normalize_update: rescale each layer's preconditioned update to RMS 1 (one lr for the whole model).
        curvature_examples: refresh the factors from the first N examples of the batch only (None: all).
        max_update_norm: clip the total norm of the raw preconditioned update over K-FAC layers (None: off;
            only with ``normalize_update=False``).
        exclude: fnmatch patterns of module names left to AdamW.
    """

    # The per-parameter state it keeps: Kronecker factors, inverses and momentum of the K-FAC layers (FOP adds
    # its β*/η*), AdamW moments of the rest. Another optimizer's state is refused on load.
    state_names = ("A", "G", "A_inv", "G_inv", "bias_inv", "momentum_buffer", "exp_avg", "exp_avg_sq")

    def load_state_dict(self, state_dict: dict) -> None:
        check_state_kind(self, state_dict, self.state_names)
        super().load_state_dict(state_dict)

    def __init__(self, params, model: nn.Module, lr: float = 6e-4, momentum: float = 0.9,
                 adamw_lr: float | None = None, betas=(0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.1,
                 damping: float = 0.1, factor_ema: float = 0.5, update_freq: int = 5, dense_steps: int = 20,
                 relative_damping: bool = True, normalize_update: bool = True, curvature_examples: int | None = None,
                 max_update_norm: float | None = None, exclude: Iterable[str] = DEFAULT_EXCLUDE):
        who = type(self).__name__
        if not isinstance(model, nn.Module):
            raise TypeError(f"{who} hooks model layers: pass model=<the nn.Module being trained>.")
        check_lr(lr)
        if lr <= 0:
            raise ValueError(f"Invalid learning rate lr={lr!r}: {who} needs lr > 0.")
        if adamw_lr is None:
            if not normalize_update:
                raise ValueError(f"{who}(normalize_update=False) needs an explicit adamw_lr: the raw K-FAC step "
                                 "has another scale than AdamW's, so one lr cannot serve both; pass adamw_lr=... "
                                 "(e.g. --optim_args adamw_lr=6e-4) or keep normalize_update=True.")
            adamw_lr = lr
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
        if not (isinstance(dense_steps, int) and dense_steps >= 0):
            raise ValueError(f"Invalid dense_steps={dense_steps!r}: the number of first steps with fresh factors "
                             "every step must be an int >= 0.")
        if curvature_examples is not None:  # a count; --optim_args hands over 4 as 4.0 (its default is None)
            if not (isinstance(curvature_examples, (int, float)) and curvature_examples >= 1
                    and float(curvature_examples).is_integer()):
                raise ValueError(f"Invalid curvature_examples={curvature_examples!r}: use an int >= 1 or None (all).")
            curvature_examples = int(curvature_examples)
        if max_update_norm is not None and not max_update_norm > 0:
            raise ValueError(f"Invalid max_update_norm={max_update_norm!r}: use a positive number or None.")
        if max_update_norm is not None and normalize_update:
            raise ValueError(f"{who}: max_update_norm clips the raw preconditioned update; with "
                             "normalize_update=True every layer's update already has RMS 1. Drop max_update_norm "
                             "or set normalize_update=False.")
        refuse_sharding(model, who)
        params = [{**item, "params": list(item["params"])} if isinstance(item, dict) else item for item in params]
        given = {id(p) for item in params for p in (item["params"] if isinstance(item, dict) else [item])}
        # Only layers whose parameters this optimizer owns (a caller may hand over a subset).
        self.layers = [layer for layer in find_layers(model, exclude) if all(id(p) in given for p in layer.params())]
        if not self.layers:
            raise ValueError(f"{who} found no nn.Linear / Conv1D layer to precondition (exclude={tuple(exclude)}).")
        self.damping, self.factor_ema, self.update_freq = damping, factor_ema, update_freq
        self.dense_steps, self.relative_damping = dense_steps, relative_damping
        self.normalize_update, self.curvature_examples = normalize_update, curvature_examples
        self.max_update_norm = max_update_norm
        kfac_ids = {id(p) for layer in self.layers for p in layer.params()}
        defaults = dict(lr=lr, momentum=momentum, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        kfac=False)
        # Each group splits into a K-FAC part (at lr, its decay rescaled to shrink at the AdamW rate) and an
        # AdamW part (at adamw_lr).
        def settings(is_kfac: bool, group: dict) -> dict:
            wd = group.get("weight_decay", weight_decay)
            return dict(kfac=is_kfac, name="kfac" if is_kfac else "adamw", lr=lr if is_kfac else adamw_lr,
                        weight_decay=wd * adamw_lr / lr if is_kfac else wd)

        super().__init__(split_groups(params, kfac_ids, settings), defaults)
        self.attach(model)

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
    def _steps_taken(self) -> int:
        state = self.state.get(self.layers[0].weight, {})
        return int(state["step"]) if "step" in state else 0

    @property
    def curvature_due(self) -> bool:
        """True on the steps whose curvature is refreshed: each of the first ``dense_steps``, then every
        ``update_freq`` optimizer steps."""
        step = self._steps_taken
        return step < self.dense_steps or step % self.update_freq == 0

    def update_curvature(self, inputs: Mapping[str, object]) -> None:
        """Fold fresh factors from ``inputs`` (labels sampled from the model at the positions that carry
        loss) into the running averages, averaged over data-parallel ranks, and recompute the damped
        inverses. During the first ``dense_steps`` a fresh factor replaces the average (ρ = 1)."""
        if self.curvature_examples is not None:
            inputs = {k: v[: self.curvature_examples] if isinstance(v, torch.Tensor) and v.dim() > 0 else v
                      for k, v in inputs.items()}
        fresh = sample_fisher_factors(self._model, self.layers, inputs, loss_mask=causal_loss_mask(inputs))
        tensors = [t for layer in self.layers for t in fresh[layer.name]]
        all_reduce_mean(tensors)
        if not all(torch.isfinite(t).all() for t in tensors):
            return  # a diverged batch: keep the last good factors (identically on every rank)
        rho = 1.0 if self._steps_taken < self.dense_steps else self.factor_ema
        for layer in self.layers:
            state = self.state[layer.weight]
            a, g = fresh[layer.name]
            if "A" in state:
                state["A"].lerp_(a, rho)
                state["G"].lerp_(g, rho)
            else:
                state["A"], state["G"] = a, g
            state["A_inv"], state["G_inv"], state["bias_inv"] = damped_inverses(
                state["A"], state["G"], self.damping, relative=self.relative_damping)

    # -- the update -----------------------------------------------------------------------------------------

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            if not group["kfac"]:
                adamw_step(group, self.state)
        self._kfac_step()
        return loss

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
            if self.normalize_update:  # RMS 1 per layer (weight and bias together): AdamW's step scale
                rms = torch.sqrt(dot(update, update) / sum(u.numel() for u in update))
                update = [u / rms.clamp_min(1e-12) for u in update]
            for p, u in zip(layer.params(), update):
                group = group_of[id(p)]
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    state["momentum_buffer"] = buf = u.clone()
                elif self.normalize_update:
                    buf.lerp_(u, 1 - group["momentum"])
                else:
                    buf.mul_(group["momentum"]).add_(u)
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(buf.to(p.dtype), alpha=-group["lr"])


class FOP(KFAC):
    """Fisher-Orthogonal Projection: K-FAC plus the Fisher-orthogonal part of the half-batch difference.

    Args: those of :class:`KFAC` (passed on as keywords; the registry reads the two signatures as one),
    plus ``beta_max`` (β* ∈ [−beta_max, beta_max]) and ``eta_max`` (η* ∈ [0, eta_max]). Before each
    ``step()`` it needs g1 − g2, the difference of the two half-batch gradients of :attr:`half_batch_params`
    (:meth:`receive_half_batch_difference`; FocoTrainer hands it over).
    """

    state_names = (*KFAC.state_names, "beta", "eta")

    def __init__(self, params, model: nn.Module, *, beta_max: float = 0.5, eta_max: float = 2.0, **kfac_settings):
        if not beta_max >= 0 or not eta_max > 0:
            raise ValueError(f"Invalid beta_max={beta_max!r} / eta_max={eta_max!r}: need beta_max >= 0, eta_max > 0.")
        super().__init__(params, model, **kfac_settings)
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

    def diagnostics(self) -> dict[str, float]:
        """The last step's β* and η* over the K-FAC layers: median |β*|, median η* (for a training log)."""
        states = [self.state[layer.weight] for layer in self.layers if "beta" in self.state[layer.weight]]
        if not states:
            return {}
        beta = torch.stack([s["beta"] for s in states]).abs().median().item()
        eta = torch.stack([s["eta"] for s in states]).median().item()
        return {"fop/beta_abs_median": beta, "fop/eta_median": eta}

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
