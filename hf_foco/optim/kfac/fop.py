"""FOP's per-layer arithmetic (Lu & Armour, AAAI-26, arXiv 2508.13898) over a layer's K-FAC Fisher F = A ⊗ G.

From the two half-batch gradients g1, g2 (weight and bias of a layer share one β* and one η*)::

    g_avg = (g1 + g2)/2 ;  g_diff = g1 − g2
    s  = <g_diff, F g_avg> / <g_avg, F g_avg>            (0 when the denominator is 0)
    g⊥ = g_diff − s·g_avg                                 (Fisher-orthogonal to g_avg)
    β* = clamp(<g_avg, F⁻¹ g⊥> / <g⊥, F⁻¹ g⊥>, ±beta_max)
    g_comb = g_avg + β*·g⊥
    η* = clamp(<g_avg, F⁻¹ g_comb> / <g_comb, F⁻¹ g_comb>, 0, eta_max)
    u  = η*·F⁻¹ g_comb

F·v uses the undamped running-average factors, F⁻¹·v the damped inverses.

Conventions (the paper's text and its code differ; we chose):

* η* uses g_tot = g_avg, not the official code's g_tot = g1 + g2 = 2·g_avg. With β* = 0 this gives η* = 1,
  so FOP with ``beta_max=0`` *is* K-FAC at the same ``lr`` (tested), the learning rate keeps its K-FAC
  meaning, and one LR sweep transfers between ``kfac`` and ``fop``. (The official convention doubles
  every step and would need half the LR.)
* β* is clamped to [−0.5, 0.5] (the official value): at β* = ±0.5 with s = 0, g_comb is one half-batch
  gradient alone, so the combination never extrapolates beyond the two measured gradients.
* η* is clamped to [0, 2]: never a step against the combined direction, at most twice K-FAC's step.

Scale: g_comb, and so u, do not change when g_diff is multiplied by a constant (β* divides by it) except
through the β* clamp. Clipping that multiplies g_avg by c but not g_diff gives s → s/c, g⊥ unchanged,
β* → c·β*, g_comb → c·g_comb and η* unchanged: the step is exactly c times the unclipped one (tested).
"""

from __future__ import annotations

import torch

from ...tensorlist import dot
from .curvature import KFACLayer


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(num))


def fisher_orthogonal_component(layer: KFACLayer, g_avg, g_diff, a: torch.Tensor, g: torch.Tensor):
    """g⊥ = g_diff − s·g_avg with s chosen so that <g⊥, F g_avg> = 0 (F = A ⊗ G, undamped)."""
    f_avg = layer.kron_apply(g_avg, a, g)
    s = _safe_ratio(dot(g_diff, f_avg), dot(g_avg, f_avg))
    return [d.float() - s * x.float() for d, x in zip(g_diff, g_avg)]


def fop_update(layer: KFACLayer, g_avg, g_diff, state: dict, beta_max: float, eta_max: float):
    """(u, β*, η*) for one layer, u = η*·F⁻¹(g_avg + β*·g⊥); see the module docstring."""
    g_perp = fisher_orthogonal_component(layer, g_avg, g_diff, state["A"], state["G"])
    p_avg = layer.kron_apply(g_avg, state["A_inv"], state["G_inv"], state["bias_inv"])
    p_perp = layer.kron_apply(g_perp, state["A_inv"], state["G_inv"], state["bias_inv"])
    aa, ap, pp = dot(g_avg, p_avg), dot(g_avg, p_perp), dot(g_perp, p_perp)
    beta = _safe_ratio(ap, pp).clamp(-beta_max, beta_max)
    eta = _safe_ratio(aa + beta * ap, aa + 2 * beta * ap + beta * beta * pp).clamp(0.0, eta_max)
    return [eta * (x + beta * y) for x, y in zip(p_avg, p_perp)], beta, eta
