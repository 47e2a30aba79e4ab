"""FOCUS: sign of momentum plus attraction toward an EMA of the parameters (Liu, Liu & Gore, 2025).

    m  <- b1*m + (1-b1)*g
    pb <- b2*pb + (1-b2)*theta          (theta before this step's move)
    ph  = pb / (1 - b2**t)              (bias-corrected parameter EMA)
    theta <- theta - lr*(sign(m) + gamma*sign(theta - ph))
    theta <- theta - lr*wd*ph           (decay pulls in proportion to ph, not theta)

``decay_order="official"`` (the default) is the authors' code, which produced the paper's GPT-2 result:
sign step first, decay second, attraction on the pre-decay theta. ``decay_order="paper"`` is Algorithm 1:
decay first, attraction measured on the decayed theta. State is kept in fp32 whatever the parameter dtype:
theta - ph is of the order of lr and a bf16 EMA of theta cannot resolve it (see ``foco``, :class:`~hf_foco.optim.FOCUS16bit`,
for the memory-efficient way).

Implementations of the same rule, chosen by :func:`focus` (:mod:`~hf_foco.optim.dispatch`): the single-tensor
reference, the chunked multi-tensor step (equal to it bit for bit), the fused C++ CPU kernel (equal bit for bit)
and, on CUDA, the multi-tensor expression :func:`_compiled_focus` compiled by ``torch.compile`` (one call per
optimizer step; the bias correction computed on the device).
"""

from __future__ import annotations

import torch

from .base import as_fp32, fp32_params, group_by_step, scratch_chunks
from .dispatch import ElementwiseRule, lerp, log_beta, widen
from .elementwise import ElementwiseOptimizer
from .validation import (
    check_betas,
    check_choice,
    check_fused_or_foreach,
    check_lr,
    check_unit_interval,
    check_weight_decay,
)

DECAY_ORDERS = ("official", "paper")


def focus(params, grads, exp_avgs, param_avgs, steps, *, foreach: bool | None = None, fused: bool | None = None,
          lr: float, beta1: float, beta2: float, gamma: float, weight_decay: float,
          decay_order: str = "official") -> None:
    """The FOCUS step on lists of tensors (fp32 states, 0-d step counters); ``foreach`` and ``fused`` as in
    :func:`~hf_foco.optim.foco.foco`."""
    FOCUS_RULE.step([params, grads, exp_avgs, param_avgs, steps], dict(
        lr=lr, beta1=beta1, beta2=beta2, gamma=gamma, weight_decay=weight_decay, decay_order=decay_order),
        foreach=foreach, fused=fused)


def _single_tensor_focus(params, grads, exp_avgs, param_avgs, steps, *, lr, beta1, beta2, gamma,
                         weight_decay, decay_order):
    for p, g, m, pbar, step in zip(params, grads, exp_avgs, param_avgs, steps):
        step += 1
        correction = 1 - beta2 ** step.item()
        m.lerp_(g.float(), 1 - beta1)
        with fp32_params([p]) as (theta,):
            pbar.lerp_(theta, 1 - beta2)
            phat = pbar / correction
            if weight_decay and decay_order == "paper":
                theta.add_(phat, alpha=-lr * weight_decay)
            # sign(theta - phat) as sign(correction*theta - pbar): exactly 0 at t = 1, where pbar is
            # (1-b2)*theta computed by the same multiply, whereas pbar/(1-b2) may miss theta by an ulp.
            update = torch.sign(theta * correction - pbar).mul_(gamma).add_(torch.sign(m))
            theta.add_(update, alpha=-lr)
            if weight_decay and decay_order == "official":
                theta.add_(phat, alpha=-lr * weight_decay)


def _multi_tensor_focus(params, grads, exp_avgs, param_avgs, steps, *, lr, beta1, beta2, gamma,
                        weight_decay, decay_order):
    """The single-tensor arithmetic, op for op, on lists; the temporaries (theta_hat, the attraction sign,
    the momentum sign) live in reused fp32 scratch (:func:`~hf_foco.optim.base.scratch_chunks`)."""
    torch._foreach_add_(steps, 1)
    for (p_list, g_list, m_list, pbar_list, _), step in group_by_step([params, grads, exp_avgs, param_avgs, steps]):
        correction = 1 - beta2 ** step
        torch._foreach_lerp_(m_list, as_fp32(g_list), 1 - beta1)
        with fp32_params(p_list) as theta:
            rows = list(zip(theta, m_list, pbar_list))
            for (theta_c, m_c, pbar_c), (phat, update, sign_m) in scratch_chunks(rows, 3):
                torch._foreach_lerp_(pbar_c, theta_c, 1 - beta2)
                torch._foreach_copy_(phat, pbar_c)
                torch._foreach_div_(phat, correction)
                if weight_decay and decay_order == "paper":
                    torch._foreach_add_(theta_c, phat, alpha=-lr * weight_decay)
                torch._foreach_copy_(update, theta_c)
                torch._foreach_mul_(update, correction)
                torch._foreach_sub_(update, pbar_c)
                torch._foreach_sign_(update)
                torch._foreach_mul_(update, gamma)
                torch._foreach_copy_(sign_m, m_c)
                torch._foreach_sign_(sign_m)
                torch._foreach_add_(update, sign_m)
                torch._foreach_add_(theta_c, update, alpha=-lr)
                if weight_decay and decay_order == "official":
                    torch._foreach_add_(theta_c, phat, alpha=-lr * weight_decay)


def _focus_kernel(module, columns, step, *, lr, beta1, beta2, gamma, weight_decay, decay_order):
    module.focus_step(*columns, 1 - beta2 ** step, lr, beta1, beta2, gamma, weight_decay, decay_order == "paper")


def _compiled_focus(params, grads, exp_avgs, param_avgs, steps, hyper, decay_order):
    """The whole step as one multi-tensor expression, traced by ``torch.compile``. The bias correction
    1 - b2**t is computed on the device, and at t = 1 it is exactly 1 - b2, as in the reference, so that
    theta*correction - pbar is exactly 0 there (no attraction on the first step)."""
    lr, one_minus_beta1, one_minus_beta2, log_beta2, gamma, lr_decay = hyper.unbind()
    torch._foreach_add_(steps, 1)
    powers = torch._foreach_exp(torch._foreach_mul(steps, log_beta2))
    correction = [torch.where(step == 1, one_minus_beta2, 1 - power) for step, power in zip(steps, powers)]
    theta = widen(params)
    momentum = lerp(exp_avgs, widen(grads), one_minus_beta1)
    pbar = lerp(param_avgs, theta, one_minus_beta2)
    phat = torch._foreach_div(pbar, correction)
    if decay_order == "paper":
        theta = torch._foreach_sub(theta, torch._foreach_mul(phat, lr_decay))
    attraction = torch._foreach_sign(torch._foreach_sub(torch._foreach_mul(theta, correction), pbar))
    update = torch._foreach_add(torch._foreach_mul(attraction, gamma), torch._foreach_sign(momentum))
    theta = torch._foreach_sub(theta, torch._foreach_mul(update, lr))
    if decay_order == "official":
        theta = torch._foreach_sub(theta, torch._foreach_mul(phat, lr_decay))
    torch._foreach_copy_(exp_avgs, momentum)
    torch._foreach_copy_(param_avgs, pbar)
    torch._foreach_copy_(params, theta)


def _focus_hyper(*, lr, beta1, beta2, gamma, weight_decay, decay_order):
    """The compiled step's hyperparameters, each computed in double here as the reference computes it."""
    return lr, 1 - beta1, 1 - beta2, log_beta(beta2), gamma, lr * weight_decay


FOCUS_RULE = ElementwiseRule("FOCUS", (torch.float32, torch.float32), _single_tensor_focus, _multi_tensor_focus,
                             _focus_kernel, _compiled_focus, _focus_hyper, static_hyper=("decay_order",))


class FOCUS(ElementwiseOptimizer):
    """FOCUS with the official code's update order by default.

    Args:
        params: parameters or parameter groups.
        lr: step size; every coordinate moves by ``lr*(1 +- gamma)`` per step plus decay.
        betas: (b1, b2) for the gradient EMA and the parameter EMA.
        gamma: attraction strength in [0, 1); 0 gives Signum exactly.
        weight_decay: decoupled decay toward 0, proportional to the parameter EMA.
        decay_order: "official" (authors' code) or "paper" (Algorithm 1).
        foreach, fused: the implementation, as in :class:`~hf_foco.optim.FOCUS16bit`.
    """

    rule = FOCUS_RULE
    state_names = ("exp_avg", "param_avg")

    def __init__(self, params, lr: float = 0.01, betas=(0.9, 0.999), gamma: float = 0.1,
                 weight_decay: float = 0.0, decay_order: str = "official", foreach: bool | None = None,
                 fused: bool | None = None):
        check_lr(lr)
        check_betas(betas)
        check_unit_interval("gamma", gamma)
        check_weight_decay(weight_decay)
        check_choice("decay_order", decay_order, DECAY_ORDERS)
        check_fused_or_foreach("FOCUS", fused, foreach)
        defaults = dict(lr=lr, betas=tuple(betas), gamma=gamma, weight_decay=weight_decay,
                        decay_order=decay_order, foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def rule_hyperparameters(self, group):
        beta1, beta2 = group["betas"]
        return dict(lr=group["lr"], beta1=beta1, beta2=beta2, gamma=group["gamma"], weight_decay=group["weight_decay"],
                    decay_order=group["decay_order"])
