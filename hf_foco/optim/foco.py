"""foco: the FOCUS rule, engineered to be Fast, COmmunication- and memory-efficient.

Same update as :class:`hf_foco.optim.FOCUS` (official order), with 4 bytes of state per parameter
instead of 8:

* ``exp_avg`` (bf16): only its sign is used, and bf16 keeps fp32's exponent range.
* ``disp`` (bf16): the displacement d = theta - theta_hat from the bias-corrected parameter EMA, instead
  of the EMA itself. A bf16 EMA of theta cannot resolve theta - theta_hat (of the order of lr, far below
  bf16's resolution of theta); d itself is a small number that bf16 stores to 3 significant digits.
  The bias-corrected EMA obeys theta_hat <- theta_hat + a_t*(theta - theta_hat) with
  a_t = (1-b2)/(1-b2**t), so d follows exactly:

      d <- (1 - a_t)*d              (the EMA absorbs the current theta)
      u  = sign(m) + gamma*sign(d)
      dtheta = -lr*u - lr*wd*(theta - d)
      theta <- theta + dtheta ;  d <- d + dtheta

  d is written back with stochastic rounding, so the rounding error of the slow EMA decay is unbiased.

The multi-tensor step is grouped by device and dtype; on CUDA a ``torch.compile``-fused step reads
theta, g, m, d once and writes theta, m, d once (20 bytes per parameter with fp32 weights).
"""

from __future__ import annotations

import torch

from .base import ElementwiseOptimizer, default_foreach, group_by_device_and_dtype
from .validation import check_betas, check_lr, check_unit_interval, check_weight_decay

STATE_DTYPE = torch.bfloat16


class Foco(ElementwiseOptimizer):
    """FOCUS in 4 bytes of state per parameter.

    Args: as :class:`~hf_foco.optim.FOCUS` (official decay order), plus ``fused``: use the
    ``torch.compile``-fused step (default: on for CUDA tensors).
    """

    state_names = ("exp_avg", "disp")

    def __init__(self, params, lr: float = 0.01, betas=(0.9, 0.999), gamma: float = 0.1,
                 weight_decay: float = 0.0, foreach: bool | None = None, fused: bool | None = None):
        check_lr(lr)
        check_betas(betas)
        check_unit_interval("gamma", gamma)
        check_weight_decay(weight_decay)
        defaults = dict(lr=lr, betas=tuple(betas), gamma=gamma, weight_decay=weight_decay,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def _init_state(self, p):
        return {name: torch.zeros_like(p, dtype=STATE_DTYPE, memory_format=torch.preserve_format)
                for name in self.state_names}

    def _apply(self, group, params, grads, states, steps):
        foreach = group["foreach"]
        if foreach is None:
            foreach = default_foreach(params)
        beta1, beta2 = group["betas"]
        fn = _multi_tensor_foco if foreach else _single_tensor_foco
        fn(params, grads, states["exp_avg"], states["disp"], steps, lr=group["lr"], beta1=beta1,
           beta2=beta2, gamma=group["gamma"], weight_decay=group["weight_decay"])


def _stochastic_round_(dst: torch.Tensor, src: torch.Tensor) -> None:
    """Write fp32 ``src`` into bf16 ``dst`` rounding up or down with probability by proximity."""
    bits = src.view(torch.int32)
    noise = torch.randint_like(bits, 0, 1 << 16)
    dst.copy_(((bits + noise) & -65536).view(torch.float32))


def _single_tensor_foco(params, grads, exp_avgs, disps, steps, *, lr, beta1, beta2, gamma, weight_decay):
    for p, g, m, d, step in zip(params, grads, exp_avgs, disps, steps):
        step += 1
        keep = 1 - (1 - beta2) / (1 - beta2 ** step.item())
        m.copy_(torch.lerp(m.float(), g.float(), 1 - beta1))
        d32 = d.float().mul_(keep)
        theta = p.float()
        dtheta = torch.sign(d32).mul_(gamma).add_(torch.sign(m)).mul_(-lr)
        if weight_decay:
            dtheta.add_(theta - d32, alpha=-lr * weight_decay)
        p.copy_(theta.add_(dtheta))
        _stochastic_round_(d, d32.add_(dtheta))


def _multi_tensor_foco(params, grads, exp_avgs, disps, steps, *, lr, beta1, beta2, gamma, weight_decay):
    for p_list, g_list, m_list, d_list, step_list in group_by_device_and_dtype(
            [params, grads, exp_avgs, disps, steps]):
        torch._foreach_add_(step_list, 1)
        keep = [1 - (1 - beta2) / (1 - beta2 ** s.item()) for s in step_list]
        torch._foreach_mul_(m_list, beta1)
        torch._foreach_add_(m_list, g_list, alpha=1 - beta1)
        d32 = torch._foreach_mul([d.float() for d in d_list], keep)
        dtheta = torch._foreach_sign(d32)
        torch._foreach_mul_(dtheta, -lr * gamma)
        torch._foreach_add_(dtheta, torch._foreach_sign(m_list), alpha=-lr)
        if weight_decay:
            torch._foreach_add_(dtheta, torch._foreach_sub(p_list, d32), alpha=-lr * weight_decay)
        torch._foreach_add_(p_list, dtheta)
        torch._foreach_add_(d32, dtheta)
        for d, src in zip(d_list, d32):
            _stochastic_round_(d, src)
