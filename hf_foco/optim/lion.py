"""Lion (Chen et al., 2023): the sign of an interpolation between momentum and gradient.

    c = b1*m + (1-b1)*g
    theta <- theta - lr*(sign(c) + wd*theta)
    m <- b2*m + (1-b2)*g
"""

from __future__ import annotations

import torch

from . import cpu_kernels
from .base import ElementwiseOptimizer, as_fp32, default_foreach, fp32_params, group_by_device_and_dtype
from .validation import check_betas, check_fused_or_foreach, check_lr, check_weight_decay


class Lion(ElementwiseOptimizer):
    """Lion with decoupled weight decay; fp32 momentum for any parameter dtype. ``fused`` and ``foreach`` as in
    :class:`~hf_foco.optim.Signum`."""

    state_names = ("exp_avg",)

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                 foreach: bool | None = None, fused: bool | None = None):
        check_lr(lr)
        check_betas(betas)
        check_weight_decay(weight_decay)
        check_fused_or_foreach("Lion", fused, foreach)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach,
                                      fused=fused))

    def _apply(self, group, params, grads, states, steps):
        beta1, beta2 = group["betas"]
        lion(params, grads, states["exp_avg"], steps, foreach=group["foreach"], fused=group.get("fused"),
             lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"])


def lion(params, grads, exp_avgs, steps, *, foreach: bool | None = None, fused: bool | None = None, lr: float,
         beta1: float, beta2: float, weight_decay: float) -> None:
    """The Lion step on lists of tensors (fp32 momentum); ``fused`` and ``foreach`` as in
    :func:`~hf_foco.optim.focus.focus`."""
    if fused is None:
        fused = not foreach and cpu_kernels.default_fused(params)
    if fused:
        rows, others = cpu_kernels.split_rows([params, grads, exp_avgs, steps], (torch.float32,))
        for (p, g, m), _ in cpu_kernels.by_step(rows):
            cpu_kernels.kernels().sign_step(p, g, m, lr, beta1, beta2, weight_decay, True)
        params, grads, exp_avgs, steps = others
        if not params:
            return
    if foreach is None:
        foreach = default_foreach(params)
    fn = _multi_tensor_lion if foreach else _single_tensor_lion
    fn(params, grads, exp_avgs, steps, lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay)


def _single_tensor_lion(params, grads, exp_avgs, steps, *, lr, beta1, beta2, weight_decay):
    for p, g, m, step in zip(params, grads, exp_avgs, steps):
        step += 1
        g = g.float()
        direction = torch.lerp(m, g, 1 - beta1).sign_()
        with fp32_params([p]) as (theta,):
            if weight_decay:
                theta.mul_(1 - lr * weight_decay)
            theta.add_(direction, alpha=-lr)
        m.lerp_(g, 1 - beta2)


def _multi_tensor_lion(params, grads, exp_avgs, steps, *, lr, beta1, beta2, weight_decay):
    for p_list, g_list, m_list, step_list in group_by_device_and_dtype([params, grads, exp_avgs, steps]):
        torch._foreach_add_(step_list, 1)
        g_list = as_fp32(g_list)
        direction = torch._foreach_lerp(m_list, g_list, 1 - beta1)
        torch._foreach_sign_(direction)
        with fp32_params(p_list) as theta:
            if weight_decay:
                torch._foreach_mul_(theta, 1 - lr * weight_decay)
            torch._foreach_add_(theta, direction, alpha=-lr)
        torch._foreach_lerp_(m_list, g_list, 1 - beta2)
