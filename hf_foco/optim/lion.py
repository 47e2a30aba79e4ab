"""Lion (Chen et al., 2023): the sign of an interpolation between momentum and gradient.

    c = b1*m + (1-b1)*g
    theta <- theta - lr*(sign(c) + wd*theta)
    m <- b2*m + (1-b2)*g

Implementations as for FOCUS (:mod:`~hf_foco.optim.focus`): single-tensor, multi-tensor, the fused CPU kernel
(all three equal bit for bit) and the compiled multi-tensor step on CUDA.
"""

from __future__ import annotations

import torch

from .base import as_fp32, fp32_params, group_by_device_and_dtype
from .dispatch import ElementwiseRule, lerp, widen
from .elementwise import ElementwiseOptimizer
from .validation import check_betas, check_fused_or_foreach, check_lr, check_weight_decay


def lion(params, grads, exp_avgs, steps, *, foreach: bool | None = None, fused: bool | None = None, lr: float,
         beta1: float, beta2: float, weight_decay: float) -> None:
    """The Lion step on lists of tensors (fp32 momentum); ``foreach`` and ``fused`` as in
    :func:`~hf_foco.optim.foco.foco`."""
    LION.step([params, grads, exp_avgs, steps], dict(lr=lr, beta1=beta1, beta2=beta2, weight_decay=weight_decay),
              foreach=foreach, fused=fused)


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


def _lion_kernel(module, columns, step, *, lr, beta1, beta2, weight_decay):
    module.sign_step(*columns, lr, beta1, beta2, weight_decay, True)


def _compiled_lion(params, grads, exp_avgs, steps, hyper):
    """The whole step as one multi-tensor expression, traced by ``torch.compile``."""
    lr, one_minus_beta1, one_minus_beta2, shrink = hyper.unbind()
    torch._foreach_add_(steps, 1)
    g32 = widen(grads)
    direction = torch._foreach_sign(lerp(exp_avgs, g32, one_minus_beta1))
    theta = torch._foreach_sub(torch._foreach_mul(widen(params), shrink), torch._foreach_mul(direction, lr))
    torch._foreach_copy_(exp_avgs, lerp(exp_avgs, g32, one_minus_beta2))
    torch._foreach_copy_(params, theta)


def _lion_hyper(*, lr, beta1, beta2, weight_decay):
    return lr, 1 - beta1, 1 - beta2, 1 - lr * weight_decay


LION = ElementwiseRule("Lion", (torch.float32,), _single_tensor_lion, _multi_tensor_lion, _lion_kernel,
                       _compiled_lion, _lion_hyper)


class Lion(ElementwiseOptimizer):
    """Lion with decoupled weight decay; fp32 momentum for any parameter dtype. ``foreach`` and ``fused``: the
    implementation, as in :class:`~hf_foco.optim.FOCUS16bit`."""

    rule = LION
    state_names = ("exp_avg",)

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                 foreach: bool | None = None, fused: bool | None = None):
        check_lr(lr)
        check_betas(betas)
        check_weight_decay(weight_decay)
        check_fused_or_foreach("Lion", fused, foreach)
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach,
                                      fused=fused))

    def rule_hyperparameters(self, group):
        beta1, beta2 = group["betas"]
        return dict(lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"])
