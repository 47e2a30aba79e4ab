"""K-FAC that trains (issue 15): factors that track the model, the exact damped Newton step where K-FAC is
exact, a loss that answers the learning rate, one lr for the whole model, and the loss-position mask."""

import pytest
import torch
import torch.nn.functional as F
from helpers import kronecker_step, tiny_gpt2, token_batches
from torch import nn

from hf_foco.optim import FOP, KFAC, param_groups
from hf_foco.optim.kfac import find_layers, sample_fisher_factors
from hf_foco.optim.kfac.curvature import causal_loss_mask


def _worst_trace_ratio(optimizer, model, batches) -> list[float]:
    """Per step: the worst ratio (either way) of fresh to averaged tr G over the layers, after the step."""
    worst = []
    for batch in batches:
        kronecker_step(optimizer, model, batch)
        fresh = sample_fisher_factors(model, optimizer.layers, batch, generator=torch.Generator().manual_seed(0),
                                      loss_mask=causal_loss_mask(batch))
        ratios = [fresh[layer.name][1].trace() / optimizer.state[layer.weight]["G"].trace()
                  for layer in optimizer.layers]
        worst.append(max(max(ratios), 1 / min(ratios)).item())
    return worst


def test_factors_track_the_model_over_the_first_steps():
    """G's scale falls fast while a GPT-2 starts to learn; the averaged factor must follow it. The old
    schedule (running average 0.05 every 10 steps) drifts off by orders of magnitude within 12 steps."""
    batches = token_batches(12, seed=1, rows=8, length=16)
    model = tiny_gpt2()
    fresh = _worst_trace_ratio(KFAC(param_groups(model, 0.1), model=model, lr=1e-2), model, batches)
    assert max(fresh) < 5, fresh
    model = tiny_gpt2()
    stale = KFAC(param_groups(model, 0.1), model=model, lr=1e-2, dense_steps=0, factor_ema=0.05, update_freq=10)
    assert max(_worst_trace_ratio(stale, model, batches)) > 100


class _SoftmaxRegression(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2, bias=False)
        nn.init.zeros_(self.linear.weight)

    def forward(self, x):
        return self.linear(x)


def test_one_step_is_the_damped_newton_step_where_kfac_is_exact(num_threads):
    """Two-class softmax regression at W = 0: p = (1/2, 1/2) for every input, so δδᵀ = ¼[[1, −1], [−1, 1]]
    whatever label is sampled, and the Hessian of the mean cross-entropy is exactly A ⊗ G with A = XᵀX/n.
    One raw step with lr 1 must be −(A_d ⊗ G_d)⁻¹ g, the factors damped by √λ times their mean eigenvalue.

    The optimizer inverts A_d and G_d in fp32: an n×n inverse is within about 3n·u·κ of the exact one
    (relative, u = 2⁻²⁴, κ its condition number), and to first order the two relative errors add in the
    Kronecker step. G is singular (damped, κ(G_d) ≈ 2000), so the step is checked in norm against that
    bound, not entry by entry (a wrong factor, damping or layout is off by O(1))."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 5) @ torch.randn(5, 5), torch.randint(0, 2, (64,))
    model = _SoftmaxRegression(5)
    damping = 1e-6
    optimizer = KFAC(model.parameters(), model=model, lr=1.0, momentum=0.0, weight_decay=0.0, damping=damping,
                     normalize_update=False, adamw_lr=1.0)
    optimizer.update_curvature({"x": x})
    F.cross_entropy(model(x), y).backward()
    grad = model.linear.weight.grad.double().clone()
    optimizer.step()

    a = x.double().T @ x.double() / len(x)
    g = 0.25 * torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)
    root = damping ** 0.5
    a_d = a + root * a.trace() / 5 * torch.eye(5, dtype=torch.float64)
    g_d = g + root * g.trace() / 2 * torch.eye(2, dtype=torch.float64)
    # vec(W) column-major: vec(G W A) = (A ⊗ G) vec(W).
    newton = -torch.linalg.solve(torch.kron(a_d, g_d), grad.T.reshape(-1))
    step = model.linear.weight.detach().double().T.reshape(-1)
    bound = 2.0 ** -24 * (3 * 5 * torch.linalg.cond(a_d) + 3 * 2 * torch.linalg.cond(g_d))
    assert (step - newton).norm() <= bound * newton.norm()
    cosine = F.cosine_similarity(newton, -grad.T.reshape(-1), dim=0)
    assert cosine < 0.9  # not a gradient step in disguise: the curvature mattered


def _loss_after_training(lr: float) -> float:
    batches = token_batches(30, seed=1, rows=8, length=16)
    model = tiny_gpt2()
    optimizer = KFAC(param_groups(model, 0.1), model=model, lr=lr)
    for batch in batches[:25]:
        kronecker_step(optimizer, model, batch)
    with torch.no_grad():
        return sum(model(**batch).loss.item() for batch in batches[25:]) / 5


def test_loss_answers_the_learning_rate():
    """Better as lr grows over a decade, worse beyond (25 steps of tiny GPT-2 on random tokens of 32 ids:
    the floor is ln 32 = 3.47). The stalled K-FAC gave about the same loss at every lr."""
    low, mid, best, high = (_loss_after_training(lr) for lr in (1e-3, 3e-3, 1e-2, 3e-1))
    assert low > mid > best
    assert low - best > 0.3
    assert high > best + 0.05


def test_one_learning_rate_serves_the_whole_model():
    model = tiny_gpt2()
    shared = KFAC(param_groups(model, 0.1), model=model, lr=5e-3)
    assert {g["lr"] for g in shared.param_groups} == {5e-3}
    assert {g["name"] for g in shared.param_groups} == {"kfac", "adamw"}
    own = FOP(param_groups(model, 0.1), model=model, lr=5e-3, adamw_lr=1e-3)
    assert {g["name"]: g["lr"] for g in own.param_groups} == {"kfac": 5e-3, "adamw": 1e-3}
    with pytest.raises(ValueError, match="normalize_update=False.*adamw_lr"):
        KFAC(param_groups(model, 0.1), model=model, normalize_update=False)
    with pytest.raises(ValueError, match="max_update_norm"):
        KFAC(param_groups(model, 0.1), model=model, max_update_norm=1.0)
    # --optim_args hands a count over as a float (curvature_examples defaults to None)
    assert KFAC(param_groups(model, 0.1), model=model, curvature_examples=4.0).curvature_examples == 4
    with pytest.raises(ValueError, match="curvature_examples"):
        KFAC(param_groups(model, 0.1), model=model, curvature_examples=2.5)


def test_normalised_update_has_rms_lr_per_layer():
    """First step, no decay: momentum buffer = u, so every K-FAC layer moves by RMS exactly lr."""
    model = tiny_gpt2()
    before = {layer.name: [p.detach().clone() for p in layer.params()] for layer in find_layers(model)}
    optimizer = KFAC(model.parameters(), model=model, lr=1e-3, weight_decay=0.0)
    kronecker_step(optimizer, model, token_batches(1)[0])
    for layer in optimizer.layers:
        moved = torch.cat([(p - b).reshape(-1) for p, b in zip(layer.params(), before[layer.name])])
        torch.testing.assert_close(moved.pow(2).mean().sqrt().item(), 1e-3, rtol=1e-3, atol=0)



def test_sampled_fisher_skips_positions_without_a_target():
    """A causal LM scores position t against labels[t + 1]: the last position, and those before a -100
    label, carry no loss, so their sampled δ must not enter G."""
    labels = torch.tensor([[5, 6, -100, 7], [1, 2, 3, 4]])
    mask = causal_loss_mask({"input_ids": labels.clamp_min(0), "labels": labels})
    assert mask.tolist() == [[True, False, True, False], [True, True, True, False]]
    assert causal_loss_mask({"input_ids": labels}) is None
    model = tiny_gpt2()
    optimizer = KFAC(model.parameters(), model=model)
    batch = token_batches(1, rows=2, length=4)[0]
    last = optimizer.layers[-1]
    full = sample_fisher_factors(model, [last], batch, generator=torch.Generator().manual_seed(0))
    masked = sample_fisher_factors(model, [last], batch, generator=torch.Generator().manual_seed(0),
                                   loss_mask=causal_loss_mask(batch))
    torch.testing.assert_close(masked[last.name][0], full[last.name][0])  # A: every input still counts
    assert not torch.allclose(masked[last.name][1], full[last.name][1])
