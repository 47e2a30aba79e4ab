"""Signum (Bernstein et al., 2018): the sign of a gradient momentum, with decoupled weight decay.

    m <- beta*m + (1-beta)*g
    theta <- theta - lr*(sign(m) + wd*theta)

The momentum persists across steps (a widely used third-party "Signum" reset it every step, which is
plain signSGD). FOCUS with gamma = 0 is exactly this rule.
"""

from __future__ import annotations

import torch

from . import cpu_kernels
from .base import ElementwiseOptimizer, as_fp32, default_foreach, fp32_params, group_by_device_and_dtype
from .validation import check_fused_or_foreach, check_lr, check_unit_interval, check_weight_decay


class Signum(ElementwiseOptimizer):
    """Sign of momentum. ``momentum`` in [0, 1); 0 gives signSGD. fp32 momentum for any param dtype.

    ``fused``: the fused CPU kernel (:mod:`~hf_foco.optim.cpu_kernels`, bit-identical to the multi-tensor
    step), default on for CPU parameters when it is available; ``foreach``: the multi-tensor step otherwise.
    """

    state_names = ("exp_avg",)

    def __init__(self, params, lr: float = 1e-4, momentum: float = 0.9, weight_decay: float = 0.0,
                 foreach: bool | None = None, fused: bool | None = None):
        check_lr(lr)
        check_unit_interval("momentum", momentum)
        check_weight_decay(weight_decay)
        check_fused_or_foreach("Signum", fused, foreach)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach,
                                      fused=fused))

    def _apply(self, group, params, grads, states, steps):
        signum(params, grads, states["exp_avg"], steps, foreach=group["foreach"], fused=group.get("fused"),
               lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"])


def signum(params, grads, exp_avgs, steps, *, foreach: bool | None = None, fused: bool | None = None, lr: float,
           momentum: float, weight_decay: float) -> None:
    """The Signum step on lists of tensors (fp32 momentum); ``fused`` and ``foreach`` as in
    :func:`~hf_foco.optim.focus.focus`."""
    if fused is None:
        fused = not foreach and cpu_kernels.default_fused(params)
    if fused:
        rows, others = cpu_kernels.split_rows([params, grads, exp_avgs, steps], (torch.float32,))
        for (p, g, m), _ in cpu_kernels.by_step(rows):
            cpu_kernels.kernels().sign_step(p, g, m, lr, momentum, 0.0, weight_decay, False)
        params, grads, exp_avgs, steps = others
        if not params:
            return
    if foreach is None:
        foreach = default_foreach(params)
    fn = _multi_tensor_signum if foreach else _single_tensor_signum
    fn(params, grads, exp_avgs, steps, lr=lr, momentum=momentum, weight_decay=weight_decay)


def _single_tensor_signum(params, grads, exp_avgs, steps, *, lr, momentum, weight_decay):
    for p, g, m, step in zip(params, grads, exp_avgs, steps):
        step += 1
        m.lerp_(g.float(), 1 - momentum)
        with fp32_params([p]) as (theta,):
            if weight_decay:
                theta.mul_(1 - lr * weight_decay)
            theta.add_(torch.sign(m), alpha=-lr)


def _multi_tensor_signum(params, grads, exp_avgs, steps, *, lr, momentum, weight_decay):
    for p_list, g_list, m_list, step_list in group_by_device_and_dtype([params, grads, exp_avgs, steps]):
        torch._foreach_add_(step_list, 1)
        torch._foreach_lerp_(m_list, as_fp32(g_list), 1 - momentum)
        with fp32_params(p_list) as theta:
            if weight_decay:
                torch._foreach_mul_(theta, 1 - lr * weight_decay)
            torch._foreach_add_(theta, torch._foreach_sign(m_list), alpha=-lr)
