"""The optimizers of the valley: each is the package's (or torch's) public functional update rule, called on
one tensor of shape (2, cells, replicates), so a whole block of (sigma, a, omega) cells moves in one call.

The rules take learning rate and weight decay as Python scalars; a sweep loops over learning rates, and a
per-cell decay is applied outside the rule as a tensor, which is exact for these rules:

* ``adam``: torch's Adam with decoupled decay ``omega * p`` (AdamW; the Adam step does not depend on p,
  so decaying the pre-step p outside the call is AdamW's update).
* ``signum`` (momentum 0.9), ``lion`` (betas 0.9, 0.99): decay ``omega * p`` of the pre-step p, which is
  what their classes do (``p *= 1 - lr*omega`` before the sign step).
* ``focus``: the package's FOCUS class, betas (0.9, 0.9), gamma 0.2, with its own decay ``omega * theta_hat``
  (official order: sign step, then decay by the bias-corrected parameter EMA).
* ``focus-toy``: the spec's toy FOCUS, the same rule with decay ``omega * p`` of the pre-step p "inside the
  same step", so that gamma = 0 is exactly ``signum``. The spec's spot values come from this rule.
* ``foco``: the package's foco rule as is (16-bit state, decay ``omega * theta_hat`` inside the rule, as
  FOCUS). Its decay cannot be applied from outside, so its blocks hold a single omega; on the omega panel
  that makes it several times slower than the others.

Each of these is tested step by step against its optimizer class (tests/test_valley.py), the toy FOCUS
against the FOCUS class without decay and against Signum with gamma = 0.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import torch
from torch.optim import adam as torch_adam

from ..optim.foco import MOMENTUM_DTYPE, PULL_DTYPE, foco
from ..optim.focus import focus
from ..optim.lion import lion
from ..optim.signum import signum
from .landscape import noisy_grad, valley_loss


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
    "rule" passes omega to the rule itself (needs one omega per call). ``state_dtypes`` names the state
    tensors the rule takes, in order, with their dtypes.
    """

    label: str
    rule: Callable
    state_dtypes: tuple[tuple[str, torch.dtype], ...]
    hyper: dict
    decay: str = "param"

    def init_state(self, p: torch.Tensor) -> dict[str, torch.Tensor]:
        state = {name: torch.zeros_like(p, dtype=dtype) for name, dtype in self.state_dtypes}
        state["step"] = torch.tensor(0.0)
        return state

    def step(self, p, g, state, lr: float, omega: torch.Tensor | float) -> None:
        before = p.clone() if self.decay == "param" else None
        self.rule([p], [g], *([state[name]] for name, _ in self.state_dtypes), [state["step"]], lr=lr,
                  weight_decay=omega if self.decay == "rule" else 0.0, **self.hyper)
        if self.decay == "param":
            p.sub_(before.mul_(omega), alpha=lr)
        elif self.decay == "ema":
            theta_hat = state["param_avg"] / (1 - self.hyper["beta2"] ** state["step"].item())
            p.sub_(theta_hat.mul_(omega), alpha=lr)


_FP32 = torch.float32
_FOCUS_HYPER = dict(beta1=0.9, beta2=0.9, gamma=0.2)
_FOCUS_STATE = (("exp_avg", _FP32), ("param_avg", _FP32))
TOY_OPTIMIZERS: dict[str, ToyOptimizer] = {
    "adam": ToyOptimizer("Adam", _adam_rule, (("exp_avg", _FP32), ("exp_avg_sq", _FP32)),
                         dict(beta1=0.9, beta2=0.999, eps=1e-8)),
    "signum": ToyOptimizer("Signum", signum, (("exp_avg", _FP32),), dict(momentum=0.9)),
    "focus-toy": ToyOptimizer("FOCUS (spec toy: decay omega*p)", focus, _FOCUS_STATE,
                              dict(_FOCUS_HYPER, decay_order="official")),
    "focus": ToyOptimizer("FOCUS", focus, _FOCUS_STATE, dict(_FOCUS_HYPER, decay_order="official"),
                          decay="ema"),
    "foco": ToyOptimizer("foco", functools.partial(foco, foreach=False, fused=False),
                         (("exp_avg", MOMENTUM_DTYPE), ("pull", PULL_DTYPE)), _FOCUS_HYPER, decay="rule"),
    "lion": ToyOptimizer("Lion", lion, (("exp_avg", _FP32),), dict(beta1=0.9, beta2=0.99)),
}


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
