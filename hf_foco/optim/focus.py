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
"""

from __future__ import annotations

import torch

from . import cpu_kernels
from .base import (
    ElementwiseOptimizer,
    as_fp32,
    default_foreach,
    fp32_params,
    group_by_device_and_dtype,
    scratch_chunks,
    step_key,
)
from .validation import (
    check_betas,
    check_choice,
    check_fused_or_foreach,
    check_lr,
    check_unit_interval,
    check_weight_decay,
)

DECAY_ORDERS = ("official", "paper")


class FOCUS(ElementwiseOptimizer):
    """FOCUS with the official code's update order by default.

    Args:
        params: parameters or parameter groups.
        lr: step size; every coordinate moves by ``lr*(1 +- gamma)`` per step plus decay.
        betas: (b1, b2) for the gradient EMA and the parameter EMA.
        gamma: attraction strength in [0, 1); 0 gives Signum exactly.
        weight_decay: decoupled decay toward 0, proportional to the parameter EMA.
        decay_order: "official" (authors' code) or "paper" (Algorithm 1).
        foreach: multi-tensor implementation; default on for plain tensors when no fused step applies.
        fused: the fused CPU kernel (:mod:`~hf_foco.optim.cpu_kernels`, bit-identical to the multi-tensor
            step); default on for CPU parameters when it is available.
    """

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

    def _apply(self, group, params, grads, states, steps):
        beta1, beta2 = group["betas"]
        focus(params, grads, states["exp_avg"], states["param_avg"], steps, foreach=group["foreach"],
              fused=group.get("fused"), lr=group["lr"], beta1=beta1, beta2=beta2, gamma=group["gamma"], weight_decay=group["weight_decay"],
              decay_order=group["decay_order"])


def focus(params, grads, exp_avgs, param_avgs, steps, *, foreach: bool | None = None, fused: bool | None = None,
          lr: float, beta1: float, beta2: float, gamma: float, weight_decay: float,
          decay_order: str = "official") -> None:
    """The FOCUS step on lists of tensors (fp32 states, 0-d step counters). ``fused`` (default on for CPU
    tensors when the CPU kernels are available) runs the rows the kernel takes; the others, or all, go to the
    multi-tensor implementation (``foreach``, default on for plain contiguous tensors, as in
    ``torch.optim.adamw.adamw``) or one tensor at a time."""
    hyper = dict(lr=lr, beta1=beta1, beta2=beta2, gamma=gamma, weight_decay=weight_decay, decay_order=decay_order)
    if fused is None:
        fused = not foreach and cpu_kernels.default_fused(params)
    if fused:
        rows, others = cpu_kernels.split_rows([params, grads, exp_avgs, param_avgs, steps], (torch.float32,) * 2)
        for (p, g, m, pbar), step in cpu_kernels.by_step(rows):
            cpu_kernels.kernels().focus_step(p, g, m, pbar, 1 - beta2 ** step, lr, beta1, beta2, gamma, weight_decay,
                                             decay_order == "paper")
        params, grads, exp_avgs, param_avgs, steps = others
        if not params:
            return
    if foreach is None:
        foreach = default_foreach(params)
    fn = _multi_tensor_focus if foreach else _single_tensor_focus
    fn(params, grads, exp_avgs, param_avgs, steps, **hyper)


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
    for p_list, g_list, m_list, pbar_list, step_list in group_by_device_and_dtype(
            [params, grads, exp_avgs, param_avgs, steps], key=step_key):
        correction = 1 - beta2 ** step_list[0].item()
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
