"""Signum (Bernstein et al., 2018): the sign of a gradient momentum, with decoupled weight decay.

    m <- beta*m + (1-beta)*g
    theta <- theta - lr*(sign(m) + wd*theta)

The momentum persists across steps (a widely used third-party "Signum" reset it every step, which is
plain signSGD). FOCUS with gamma = 0 is exactly this rule. Implementations as for FOCUS
(:mod:`~hf_foco.optim.focus`): single-tensor, multi-tensor, the fused CPU kernel (all three equal bit for bit)
and the compiled multi-tensor step on CUDA.
"""

from __future__ import annotations

import torch

from .base import as_fp32, fp32_params, group_by_device_and_dtype
from .dispatch import ElementwiseRule, lerp, widen
from .elementwise import ElementwiseOptimizer
from .validation import check_fused_or_foreach, check_lr, check_unit_interval, check_weight_decay


def signum(params, grads, exp_avgs, steps, *, foreach: bool | None = None, fused: bool | None = None, lr: float,
           momentum: float, weight_decay: float) -> None:
    """The Signum step on lists of tensors (fp32 momentum); ``foreach`` and ``fused`` as in
    :func:`~hf_foco.optim.foco.foco`."""
    SIGNUM.step([params, grads, exp_avgs, steps], dict(lr=lr, momentum=momentum, weight_decay=weight_decay),
                foreach=foreach, fused=fused)


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


def _signum_kernel(module, columns, step, *, lr, momentum, weight_decay):
    module.sign_step(*columns, lr, momentum, 0.0, weight_decay, False)


def _compiled_signum(params, grads, exp_avgs, steps, hyper):
    """The whole step as one multi-tensor expression, traced by ``torch.compile``."""
    lr, one_minus_momentum, shrink = hyper.unbind()
    torch._foreach_add_(steps, 1)
    momentum = lerp(exp_avgs, widen(grads), one_minus_momentum)
    theta = torch._foreach_sub(torch._foreach_mul(widen(params), shrink),
                               torch._foreach_mul(torch._foreach_sign(momentum), lr))
    torch._foreach_copy_(exp_avgs, momentum)
    torch._foreach_copy_(params, theta)


def _signum_hyper(*, lr, momentum, weight_decay):
    return lr, 1 - momentum, 1 - lr * weight_decay


SIGNUM = ElementwiseRule("Signum", (torch.float32,), _single_tensor_signum, _multi_tensor_signum, _signum_kernel,
                         _compiled_signum, _signum_hyper)


class Signum(ElementwiseOptimizer):
    """Sign of momentum. ``momentum`` in [0, 1); 0 gives signSGD. fp32 momentum for any param dtype.
    ``foreach`` and ``fused``: the implementation, as in :class:`~hf_foco.optim.FOCUS16bit`."""

    rule = SIGNUM
    state_names = ("exp_avg",)

    def __init__(self, params, lr: float = 1e-4, momentum: float = 0.9, weight_decay: float = 0.0,
                 foreach: bool | None = None, fused: bool | None = None):
        check_lr(lr)
        check_unit_interval("momentum", momentum)
        check_weight_decay(weight_decay)
        check_fused_or_foreach("Signum", fused, foreach)
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=foreach,
                                      fused=fused))

    def rule_hyperparameters(self, group):
        return dict(lr=group["lr"], momentum=group["momentum"], weight_decay=group["weight_decay"])
