"""Muon on a transformer's hidden matrices and AdamW on everything else, as one optimizer (registry ``muon``).

Muon (Keller Jordan 2024; ``torch.optim.Muon``) is SGD momentum (0.95, Nesterov) whose update of a 2-D weight
is orthogonalised by five quintic Newton–Schulz iterations. Its authors (modded-nanogpt) and Moonshot ("Muon
is Scalable for LLM Training", Liu et al. 2025) apply it to the hidden matrices only, the attention and MLP
weights, and train the embeddings, the LM head (tied or not), the LayerNorm gains and every bias with AdamW.
:class:`MuonAdamW` makes that split by layer: the weights of the ``nn.Linear`` / transformers ``Conv1D``
layers that :func:`~hf_foco.optim.kfac.curvature.find_layers` finds (embeddings, the LM head and any layer
tied to an embedding excluded) go to ``torch.optim.Muon``, every other parameter to ``torch.optim.AdamW``'s
step. Both parts are torch's own code; this class only routes parameters, holds the state and schedules.

Choices, and why:

* ``adjust_lr_fn="match_rms_adamw"`` (default): Muon's update is scaled by 0.2·sqrt(max(A, B)), which gives it
  the RMS of a typical AdamW update, so one learning rate and one weight decay drive both parts and AdamW's
  tuned values carry over (Moonshot). ``"original"`` (Keller Jordan: sqrt(max(1, A/B)), lr about 0.02-0.05)
  has another scale than AdamW's, so it needs an explicit ``adamw_lr``.
* Layouts: ``nn.Linear`` keeps W as (out, in), GPT-2's ``Conv1D`` as (in, out). Muon is handed Conv1D weights
  transposed (a view), so every matrix reaches it as (out, in): ``"original"``'s A/B is fan-out / fan-in for
  both. The orthogonalisation itself does not care: Newton–Schulz of Wᵀ is the transpose of that of W.
* GPT-2's ``c_attn`` stacks Q, K and V along its output. Layers matching ``qkv_layers`` (default
  ``("*c_attn",)``) are orthogonalised as three (d, d) blocks, one per projection, as modded-nanogpt does
  with its Q, K, V weights; ``qkv_layers=()`` orthogonalises the stacked matrix whole.

Muon reaches the matrices through views (transposes, the Q/K/V blocks) of the weights, their gradients and
their momentum buffers, built at every step, so the state is one ``momentum_buffer`` per weight in
``self.state`` (AdamW's ``step``, ``exp_avg``, ``exp_avg_sq`` for the rest): ``state_dict`` and
``load_state_dict`` are torch's. FSDP and DeepSpeed are refused: they shard the matrices.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..distributed import refuse_sharding
from .base import adamw_step, closure_loss, split_groups
from .kfac.curvature import DEFAULT_EXCLUDE, KFACLayer, find_layers
from .state import check_state_kind
from .validation import check_betas, check_choice, check_lr, check_unit_interval, check_weight_decay

ADJUST_LR_FNS = ("match_rms_adamw", "original")
STATE_NAMES = ("momentum_buffer", "exp_avg", "exp_avg_sq")


class MuonAdamW(torch.optim.Optimizer):
    """Muon (``torch.optim.Muon``) on the hidden matrices, AdamW (torch's) on the other parameters.

    Args:
        params: parameters or groups (the Muon / AdamW split is made by layer, inside; each group keeps its
            weight decay).
        model: the module whose hidden matrices Muon trains (FocoTrainer passes it).
        lr: learning rate of Muon, and of AdamW unless ``adamw_lr`` is given.
        weight_decay: decoupled decay of both parts (``p *= 1 - lr·wd``, as torch's Muon and AdamW).
        momentum, nesterov, ns_steps: Muon's momentum, Nesterov switch and Newton–Schulz iterations.
        adjust_lr_fn: Muon's learning-rate scale per matrix shape, "match_rms_adamw" or "original" (module
            docstring).
        adamw_lr, betas, eps: AdamW's learning rate (None: ``lr``; required with ``adjust_lr_fn="original"``),
            betas and epsilon.
        qkv_layers: fnmatch patterns of layers whose output stacks Q, K and V, orthogonalised per projection.
        exclude: fnmatch patterns of module names left to AdamW (default: embeddings and the LM head).
    """

    def __init__(self, params, model: nn.Module, lr: float = 6e-4, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 adjust_lr_fn: str = "match_rms_adamw", adamw_lr: float | None = None, betas=(0.9, 0.95),
                 eps: float = 1e-8, qkv_layers: Iterable[str] = ("*c_attn",), exclude: Iterable[str] = DEFAULT_EXCLUDE):
        if not isinstance(model, nn.Module):
            raise TypeError("MuonAdamW finds the hidden matrices in the model: pass model=<the nn.Module being trained>.")
        check_lr(lr)
        check_weight_decay(weight_decay)
        check_unit_interval("momentum", momentum)
        check_choice("adjust_lr_fn", adjust_lr_fn, ADJUST_LR_FNS)
        if not (isinstance(ns_steps, int) and 1 <= ns_steps < 100):
            raise ValueError(f"Invalid ns_steps={ns_steps!r}: use an int from 1 to 99 (5 is Muon's).")
        if adamw_lr is None:
            if adjust_lr_fn == "original":
                raise ValueError("MuonAdamW(adjust_lr_fn='original') needs an explicit adamw_lr: Muon's original "
                                 "scale wants an lr about 30x AdamW's, so one lr cannot serve both; pass adamw_lr=... "
                                 "(e.g. --optim_args adamw_lr=6e-4) or keep adjust_lr_fn='match_rms_adamw'.")
            adamw_lr = lr
        check_lr(adamw_lr)
        check_betas(betas)
        refuse_sharding(model, "MuonAdamW")
        self.qkv_layers = tuple(qkv_layers)
        params = [{**item, "params": list(item["params"])} if isinstance(item, dict) else item for item in params]
        given = {id(p) for item in params for p in (item["params"] if isinstance(item, dict) else [item])}
        self._layers = {id(layer.weight): layer for layer in find_layers(model, exclude) if id(layer.weight) in given}
        if not self._layers:
            raise ValueError(f"MuonAdamW found no hidden nn.Linear / Conv1D weight to train (exclude={tuple(exclude)}).")
        for layer in self._layers.values():
            if self._splits_qkv(layer) and layer.out_features % 3:
                raise ValueError(f"MuonAdamW: layer {layer.name!r} matches qkv_layers={self.qkv_layers} but its "
                                 f"{layer.out_features} outputs are not Q, K and V stacked; set qkv_layers.")
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn, betas=tuple(betas), eps=eps, muon=False)
        super().__init__(split_groups(params, set(self._layers), lambda is_muon, group: dict(
            muon=is_muon, name="muon" if is_muon else "adamw", lr=lr if is_muon else adamw_lr)), defaults)

    def _splits_qkv(self, layer: KFACLayer) -> bool:
        return any(fnmatch.fnmatchcase(layer.name, pattern) for pattern in self.qkv_layers)

    def matrices(self, weight: torch.Tensor, tensor: torch.Tensor) -> list[torch.Tensor]:
        """The views of ``tensor`` (``weight`` itself, its gradient or its momentum) that Muon treats as its
        matrices: the (out, in) orientation, cut into Q, K and V blocks where the layer stacks them."""
        layer = self._layers[id(weight)]
        matrix = tensor.T if layer.transposed else tensor
        return list(matrix.chunk(3, dim=0)) if self._splits_qkv(layer) else [matrix]

    def load_state_dict(self, state_dict: dict) -> None:
        """torch's, refusing another optimizer's state (torch would load it and step on it)."""
        check_state_kind(self, state_dict, STATE_NAMES, STATE_NAMES)
        super().load_state_dict(state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):
        loss = closure_loss(closure)
        for group in self.param_groups:
            if group["muon"]:
                self._muon_step(group)
            else:
                adamw_step(group, self.state)
        return loss

    def _muon_step(self, group: dict) -> None:
        """torch's Muon on the group's matrices (views; see :meth:`matrices`), with its momentum in ours."""
        views = []
        for weight in group["params"]:
            if weight.grad is None:
                continue
            state = self.state[weight]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(weight.grad, memory_format=torch.preserve_format)
            views += zip(self.matrices(weight, weight.detach()), self.matrices(weight, weight.grad),
                         self.matrices(weight, state["momentum_buffer"]))
        if not views:
            return
        muon = torch.optim.Muon([matrix for matrix, _, _ in views], lr=group["lr"],
                                weight_decay=group["weight_decay"], momentum=group["momentum"],
                                nesterov=group["nesterov"], ns_steps=group["ns_steps"],
                                adjust_lr_fn=group["adjust_lr_fn"])
        for matrix, grad, buffer in views:
            matrix.grad = grad
            muon.state[matrix]["momentum_buffer"] = buffer
        muon.step()
