"""foco: the FOCUS rule, engineered to be Fast, COmmunication- and memory-efficient.

:class:`FOCUS16bit` makes the same update as :class:`hf_foco.optim.FOCUS` (official order) with 4 bytes of
state per parameter instead of 8:

* ``exp_avg`` in bf16: only its sign is used; bf16 keeps fp32's exponent range, so tiny gradients do not
  underflow to a zero momentum.
* ``pull`` in fp16: e = theta_hat - theta, the pull toward the bias-corrected parameter EMA, instead of
  the EMA itself. A 16-bit EMA of theta cannot resolve theta - theta_hat, which is of the order of lr and
  far below the resolution of theta; e itself is a small number, stored to 11 significant bits. The
  bias-corrected EMA obeys theta_hat <- theta_hat + a_t*(theta - theta_hat) with a_t = (1-b2)/(1-b2**t),
  so with k_t = 1 - a_t the step is exactly:

      theta_hat = theta + k_t*e             (the EMA absorbs the current theta)
      u  = sign(m) - gamma*sign(e)          (sign(theta - theta_hat) = -sign(e) since k_t > 0 for t > 1)
      theta <- theta - lr*u - lr*wd*theta_hat
      e <- theta_hat - theta

  fp16 rather than bf16 for e: its relative step 2**-11 is finer than the per-step EMA decay 1 - b2 for
  every b2 <= 0.999, so round-to-nearest never freezes the EMA (bf16's 2**-8 would for b2 = 0.999). e is
  rounded once per step, from fp32.

Implementations of the same rule, chosen by :func:`foco` (the functional form; :mod:`~hf_foco.optim.dispatch`
says which runs where): the single-tensor reference; a multi-tensor (``torch._foreach_*``) step grouped by
device and dtype, working in place in fp32 scratch buffers of bounded size (so it allocates no per-parameter
temporaries); and fused steps that read theta, g, m, e once and write theta, m, e once (20 bytes per fp32
parameter): on CPU the C++ kernel of :mod:`~hf_foco.optim.cpu_kernels` (equal to the multi-tensor step bit for
bit), on CUDA the multi-tensor expression :func:`_compiled_foco` compiled by ``torch.compile`` (one call per
optimizer step; it computes k_t on the device and rounds the same quantities, up to the order of fp32
operations).
"""

from __future__ import annotations

import torch

from .base import as_fp32, fp32_params, group_by_step, scratch_chunks
from .dispatch import ElementwiseRule, lerp, log_beta, widen
from .elementwise import ElementwiseOptimizer
from .validation import check_betas, check_fused_or_foreach, check_lr, check_unit_interval, check_weight_decay

MOMENTUM_DTYPE = torch.bfloat16
PULL_DTYPE = torch.float16


def foco(params, grads, exp_avgs, pulls, steps, *, foreach: bool | None = None, fused: bool | None = None, lr: float,
         beta1: float, beta2: float, gamma: float, weight_decay: float) -> None:
    """The foco step on lists of tensors (``exp_avgs`` in bf16, ``pulls`` in fp16, ``steps`` 0-d counters).

    Like ``torch.optim.adamw.adamw`` it picks the implementation from ``foreach`` and ``fused``
    (:mod:`~hf_foco.optim.dispatch`); all compute the same rule (module docstring).
    """
    FOCO.step([params, grads, exp_avgs, pulls, steps], dict(lr=lr, beta1=beta1, beta2=beta2, gamma=gamma,
              weight_decay=weight_decay), foreach=foreach, fused=fused)


def _ema_keep(beta2: float, step: float) -> float:
    """k_t = 1 - a_t: the fraction of the pull that survives the bias-corrected EMA update at step t."""
    return 1 - (1 - beta2) / (1 - beta2 ** step)


def _single_tensor_foco(params, grads, exp_avgs, pulls, steps, *, lr, beta1, beta2, gamma, weight_decay):
    for p, g, m, e, step in zip(params, grads, exp_avgs, pulls, steps):
        step += 1
        m32 = m.float().lerp_(g.float(), 1 - beta1)
        m.copy_(m32)
        update = e.float()
        with fp32_params([p]) as (theta,):
            theta_hat = theta.add(update, alpha=_ema_keep(beta2, step.item()))
            update.sign_().mul_(-gamma).add_(m32.sign_())
            if weight_decay:
                update.add_(theta_hat, alpha=weight_decay)
            theta.add_(update, alpha=-lr)
            e.copy_(theta_hat.sub_(theta))


def _multi_tensor_foco(params, grads, exp_avgs, pulls, steps, *, lr, beta1, beta2, gamma, weight_decay):
    """The single-tensor arithmetic, op for op, on lists, in place in reused fp32 scratch
    (:func:`~hf_foco.optim.base.scratch_chunks`): the 16-bit states are widened once and rounded back once
    (a mixed-dtype foreach op would convert on every call) and no full-size temporary is allocated."""
    torch._foreach_add_(steps, 1)
    for (p_list, g_list, m_list, e_list, _), step in group_by_step([params, grads, exp_avgs, pulls, steps]):
        keep = _ema_keep(beta2, step)
        with fp32_params(p_list) as theta:
            rows = list(zip(theta, as_fp32(g_list), m_list, e_list))
            for (theta_c, g_c, m_c, e_c), (m32, update, theta_hat) in scratch_chunks(rows, 3):
                torch._foreach_copy_(m32, m_c)
                torch._foreach_lerp_(m32, g_c, 1 - beta1)
                torch._foreach_copy_(m_c, m32)
                torch._foreach_copy_(update, e_c)
                torch._foreach_copy_(theta_hat, theta_c)
                torch._foreach_add_(theta_hat, update, alpha=keep)
                torch._foreach_sign_(update)
                torch._foreach_mul_(update, -gamma)
                torch._foreach_sign_(m32)
                torch._foreach_add_(update, m32)
                if weight_decay:
                    torch._foreach_add_(update, theta_hat, alpha=weight_decay)
                torch._foreach_add_(theta_c, update, alpha=-lr)
                torch._foreach_sub_(theta_hat, theta_c)
                torch._foreach_copy_(e_c, theta_hat)


def _foco_kernel(module, columns, step, *, lr, beta1, beta2, gamma, weight_decay):
    module.foco_step(*columns, _ema_keep(beta2, step), lr, beta1, gamma, weight_decay)


def _compiled_foco(params, grads, exp_avgs, pulls, steps, hyper):
    """The whole step as one multi-tensor expression, traced by ``torch.compile`` (hyperparameters and step
    counters on the device: see :func:`_foco_hyper`)."""
    lr, one_minus_beta1, log_beta2, one_minus_beta2, gamma, weight_decay = hyper.unbind()
    torch._foreach_add_(steps, 1)
    keep = [1 - one_minus_beta2 / (1 - power) for power in torch._foreach_exp(torch._foreach_mul(steps, log_beta2))]
    theta, pull = widen(params), widen(pulls)
    momentum = lerp(widen(exp_avgs), widen(grads), one_minus_beta1)
    theta_hat = torch._foreach_add(theta, torch._foreach_mul(pull, keep))
    update = torch._foreach_add(torch._foreach_mul(torch._foreach_sign(pull), -gamma), torch._foreach_sign(momentum))
    update = torch._foreach_add(update, torch._foreach_mul(theta_hat, weight_decay))
    new_theta = torch._foreach_sub(theta, torch._foreach_mul(update, lr))
    torch._foreach_copy_(exp_avgs, momentum)
    torch._foreach_copy_(pulls, torch._foreach_sub(theta_hat, new_theta))
    torch._foreach_copy_(params, new_theta)


def _foco_hyper(*, lr, beta1, beta2, gamma, weight_decay):
    """The compiled step's hyperparameters, each computed in double here as the reference computes it."""
    return lr, 1 - beta1, log_beta(beta2), 1 - beta2, gamma, weight_decay


FOCO = ElementwiseRule("foco", (MOMENTUM_DTYPE, PULL_DTYPE), _single_tensor_foco, _multi_tensor_foco, _foco_kernel,
                       _compiled_foco, _foco_hyper)


class FOCUS16bit(ElementwiseOptimizer):
    """FOCUS in 4 bytes of optimizer state per parameter (registry name ``foco``).

    Args:
        params, lr, betas, gamma, weight_decay: as :class:`~hf_foco.optim.FOCUS` (official decay order).
        foreach, fused: the implementation, with torch's meanings (:mod:`~hf_foco.optim.dispatch`): ``False``
            the single-tensor reference, ``foreach=True`` multi-tensor, ``fused=True`` the fused step (an error
            where there is none), unset the fastest available (fused: the CPU kernels, ``torch.compile`` on CUDA).

    The rule as a function of tensor lists: :func:`foco`.
    """

    rule = FOCO
    state_names = ("exp_avg", "pull")

    def __init__(self, params, lr: float = 0.01, betas=(0.9, 0.999), gamma: float = 0.1,
                 weight_decay: float = 0.0, foreach: bool | None = None, fused: bool | None = None):
        check_lr(lr)
        check_betas(betas)
        check_unit_interval("gamma", gamma)
        check_weight_decay(weight_decay)
        check_fused_or_foreach("foco", fused, foreach)
        defaults = dict(lr=lr, betas=tuple(betas), gamma=gamma, weight_decay=weight_decay,
                        foreach=foreach, fused=fused)
        super().__init__(params, defaults)

    def state_dtype(self, name, p):
        return MOMENTUM_DTYPE if name == "exp_avg" else PULL_DTYPE

    def rule_hyperparameters(self, group):
        beta1, beta2 = group["betas"]
        return dict(lr=group["lr"], beta1=beta1, beta2=beta2, gamma=group["gamma"], weight_decay=group["weight_decay"])
