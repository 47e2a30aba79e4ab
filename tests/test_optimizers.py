"""The sign-based optimizers against slow per-element references, invariants and their contracts."""

from __future__ import annotations

import copy
import io
from fractions import Fraction

import pytest
import torch

from hf_foco.optim import FOCUS, FOCUS16bit, Lion, Signum
from hf_foco.optim import base as optim_base

STEPS, SIZE = 25, 12


def _sign(x) -> int:
    return (x > 0) - (x < 0)


def _grad_stream(seed: int = 0):
    """Gradients that depend on theta (a noisy quadratic), so the trajectory feeds back into them."""
    gen = torch.Generator().manual_seed(seed)
    noise = [torch.randn(SIZE, generator=gen) for _ in range(STEPS)]
    return lambda t, theta: [float(n) + 0.5 * x for n, x in zip(noise[t], theta)]


def _focus_reference(theta0, lr, b1, b2, gamma, wd, order):
    """Algorithm text executed element by element in exact rational arithmetic (signs are exact)."""
    lr, b1, b2, gamma, wd = map(Fraction, (lr, b1, b2, gamma, wd))
    theta = [Fraction(x) for x in theta0]
    m = [Fraction(0)] * SIZE
    pbar = [Fraction(0)] * SIZE
    grads = _grad_stream()
    for t in range(STEPS):
        g = grads(t, [float(x) for x in theta])
        for i in range(SIZE):
            m[i] = b1 * m[i] + (1 - b1) * Fraction(g[i])
            pbar[i] = b2 * pbar[i] + (1 - b2) * theta[i]
            phat = pbar[i] / (1 - b2 ** (t + 1))
            if order == "paper":
                theta[i] -= lr * wd * phat
            theta[i] -= lr * (_sign(m[i]) + gamma * _sign(theta[i] - phat))
            if order == "official":
                theta[i] -= lr * wd * phat
    return [float(x) for x in theta]


def _signum_reference(theta0, lr, beta, wd):
    theta, m = list(theta0), [0.0] * SIZE
    grads = _grad_stream()
    for t in range(STEPS):
        g = grads(t, theta)
        for i in range(SIZE):
            m[i] = beta * m[i] + (1 - beta) * g[i]
            theta[i] -= lr * (_sign(m[i]) + wd * theta[i])
    return theta


def _lion_reference(theta0, lr, b1, b2, wd):
    theta, m = list(theta0), [0.0] * SIZE
    grads = _grad_stream()
    for t in range(STEPS):
        g = grads(t, theta)
        for i in range(SIZE):
            c = b1 * m[i] + (1 - b1) * g[i]
            theta[i] -= lr * (_sign(c) + wd * theta[i])
            m[i] = b2 * m[i] + (1 - b2) * g[i]
    return theta


def _run(cls, theta0, **kwargs):
    p = torch.nn.Parameter(torch.tensor(theta0))
    opt = cls([p], **kwargs)
    grads = _grad_stream()
    for t in range(STEPS):
        p.grad = torch.tensor(grads(t, p.detach().tolist()))
        opt.step()
    return p.detach().tolist()


THETA0 = torch.randn(SIZE, generator=torch.Generator().manual_seed(1)).tolist()


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("order", ["official", "paper"])
@pytest.mark.parametrize("wd", [0.0, 0.3])
def test_focus_matches_reference(foreach, order, wd):
    kw = dict(lr=0.01, betas=(0.9, 0.95), gamma=0.2, weight_decay=wd)
    got = _run(FOCUS, THETA0, decay_order=order, foreach=foreach, **kw)
    want = _focus_reference(THETA0, kw["lr"], 0.9, 0.95, 0.2, wd, order)
    assert got == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.3])
def test_signum_matches_reference(foreach, wd):
    got = _run(Signum, THETA0, lr=0.01, momentum=0.9, weight_decay=wd, foreach=foreach)
    assert got == pytest.approx(_signum_reference(THETA0, 0.01, 0.9, wd), abs=1e-5)


@pytest.mark.parametrize("foreach", [False, True])
@pytest.mark.parametrize("wd", [0.0, 0.3])
def test_lion_matches_reference(foreach, wd):
    got = _run(Lion, THETA0, lr=0.01, betas=(0.9, 0.99), weight_decay=wd, foreach=foreach)
    assert got == pytest.approx(_lion_reference(THETA0, 0.01, 0.9, 0.99, wd), abs=1e-5)


@pytest.mark.parametrize("foreach", [False, True])
def test_foco_matches_focus_reference_in_exact_arithmetic_terms(foreach):
    """foco tracks theta_hat - theta instead of the EMA: same rule, so it follows the exact reference
    up to its 16-bit state rounding (a sign of m flips only when m is within bf16 rounding of 0)."""
    got = _run(FOCUS16bit, THETA0, lr=0.01, betas=(0.9, 0.95), gamma=0.2, weight_decay=0.3, foreach=foreach)
    want = _focus_reference(THETA0, 0.01, 0.9, 0.95, 0.2, 0.3, "official")
    assert got == pytest.approx(want, abs=1e-4)


def test_gamma_zero_is_signum():
    focus = _run(FOCUS, THETA0, lr=0.01, betas=(0.9, 0.99), gamma=0.0)
    signum = _run(Signum, THETA0, lr=0.01, momentum=0.9)
    assert focus == signum


@pytest.mark.parametrize("cls", [FOCUS, FOCUS16bit])
def test_first_step_is_minus_lr_sign_grad_minus_decay(cls):
    theta = torch.randn(1000)
    g = torch.randn(1000)
    p = torch.nn.Parameter(theta.clone())
    opt = cls([p], lr=0.01, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1)
    p.grad = g.clone()
    opt.step()
    # At t = 1 theta_hat = theta: no attraction, and the decay pulls by lr*wd*theta.
    expected = theta - 0.01 * torch.sign(g) - 0.01 * 0.1 * theta
    torch.testing.assert_close(p.detach(), expected, rtol=0, atol=1e-6)


def test_signum_momentum_accumulates_across_steps():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = Signum([p], lr=1.0, momentum=0.9)
    p.grad = torch.tensor([1.0])
    opt.step()
    p.grad = torch.tensor([-0.5])
    opt.step()
    # m = 0.9*0.1 + 0.1*(-0.5) = 0.04 > 0: the second step still goes down; signSGD would go up.
    assert opt.state[p]["exp_avg"].item() == pytest.approx(0.04)
    assert p.item() == pytest.approx(-2.0)


@pytest.mark.parametrize("cls, chunk", [(FOCUS, None), (FOCUS, 8), (FOCUS16bit, None), (FOCUS16bit, 8), (Signum, None),
                                        (Lion, None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_multi_tensor_equals_single_tensor(cls, chunk, dtype, monkeypatch):
    """chunk: FOCUS's and foco's multi-tensor steps work in scratch buffers of CHUNK_NUMEL elements; 8 cuts the
    (7, 5) and (3, 4, 2) tensors into pieces and packs small ones together, which must not change a bit."""
    if chunk is not None:
        monkeypatch.setattr(optim_base, "CHUNK_NUMEL", chunk)
    gen = torch.Generator().manual_seed(3)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    init = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(dtype) for s in shapes] for _ in range(10)]
    results = []
    for foreach in (False, True):
        params = [torch.nn.Parameter(x.clone()) for x in init]
        opt = cls(params, lr=0.01, weight_decay=0.1, foreach=foreach)
        for step_grads in grads:
            for p, g in zip(params, step_grads):
                p.grad = g.clone()
            opt.step()
        results.append([p.detach() for p in params])
    for a, b in zip(*results):
        assert a.dtype == dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _mlp_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(512, 16, generator=gen)
    w_true = torch.randn(16, 1, generator=gen)
    y = torch.tanh(x @ w_true) + 0.1 * torch.randn(512, 1, generator=gen)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    return model, x, y


def test_foco_follows_focus_on_an_mlp():
    """foco differs from FOCUS only by rounding its state to 16 bits.

    Same gradients: feeding both the gradients of one trajectory isolates that rounding, which flips
    sign(m) or sign(theta - theta_hat) only where they are within ~2**-8 relative of 0, so at least 99% of
    the update signs must agree at every step. Own trajectories: the two runs then drift apart like two
    seeds of one optimizer; their loss curves, averages over all coordinates, stay within 1% of the initial
    loss at every step, and their final plateaus (last 50 steps, where lr-sized sign oscillation sets the
    floor) within 10% of each other.
    """
    model, x, y = _mlp_problem()
    twin = copy.deepcopy(model)
    kw = dict(lr=3e-3, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1)
    focus, foco = FOCUS(model.parameters(), **kw), FOCUS16bit(twin.parameters(), **kw)
    gen = torch.Generator().manual_seed(7)
    agreement = []
    for _ in range(300):
        idx = torch.randint(0, 512, (32,), generator=gen)
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        for p, q in zip(model.parameters(), twin.parameters()):
            q.grad = p.grad.clone()
        before = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (model, twin)]
        focus.step()
        foco.step()
        after = [torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (model, twin)]
        agreement.append((torch.sign(after[0] - before[0]) == torch.sign(after[1] - before[1])).float().mean())
    assert min(agreement) >= 0.99

    curves = {}
    for name, cls in (("focus", FOCUS), ("foco", FOCUS16bit)):
        model, x, y = _mlp_problem()
        opt = cls(model.parameters(), **kw)
        gen = torch.Generator().manual_seed(7)
        curves[name] = []
        for _ in range(300):
            idx = torch.randint(0, 512, (32,), generator=gen)
            model.zero_grad()
            torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
            opt.step()
            with torch.no_grad():
                curves[name].append(torch.nn.functional.mse_loss(model(x), y).item())
    focus_curve, foco_curve = torch.tensor(curves["focus"]), torch.tensor(curves["foco"])
    assert focus_curve[-1] < 0.5 * focus_curve[0]
    assert (foco_curve - focus_curve).abs().max() <= 0.01 * focus_curve[0]
    assert foco_curve[-50:].mean().item() == pytest.approx(focus_curve[-50:].mean().item(), rel=0.10)


def _state_bytes_per_param(opt):
    tensors = [t for state in opt.state.values() for t in state.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0]
    numel = sum(p.numel() for g in opt.param_groups for p in g["params"])
    return sum(t.numel() * t.element_size() for t in tensors) / numel


@pytest.mark.parametrize("cls, limit", [(FOCUS16bit, 4), (Signum, 4), (Lion, 4), (FOCUS, 8)])
def test_state_bytes_per_param(cls, limit):
    model, x, y = _mlp_problem()
    opt = cls(model.parameters(), lr=1e-3)
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()
    assert _state_bytes_per_param(opt) == limit


def _train(opt_factory, steps, state=None, seed=0):
    model, x, y = _mlp_problem(seed)
    opt = opt_factory(model.parameters())
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
    gen = torch.Generator().manual_seed(100 + (state["step"] if state else 0))
    for _ in range(steps):
        idx = torch.randint(0, 512, (32,), generator=gen)
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    return model, opt


@pytest.mark.parametrize("cls", [FOCUS, FOCUS16bit, Signum, Lion])
def test_state_dict_roundtrip_resumes_exactly(cls):
    def factory(params):
        return cls(params, lr=1e-2, weight_decay=0.1)

    full, _ = _train(factory, 20)
    half, opt = _train(factory, 10)
    buffer = io.BytesIO()
    torch.save({"model": half.state_dict(), "optimizer": opt.state_dict(), "step": 10}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    # Continue with the generator position of the uninterrupted run.
    model, x, y = _mlp_problem()
    opt = factory(model.parameters())
    model.load_state_dict(checkpoint["model"])
    opt.load_state_dict(checkpoint["optimizer"])
    gen = torch.Generator().manual_seed(100)
    for step in range(20):
        idx = torch.randint(0, 512, (32,), generator=gen)
        if step < 10:
            continue
        model.zero_grad()
        torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        opt.step()
    for a, b in zip(full.parameters(), model.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls", [FOCUS, FOCUS16bit, Signum, Lion])
def test_state_is_lazy_and_gradless_params_are_skipped(cls):
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    opt = cls([a, b], lr=0.1)
    assert len(opt.state) == 0
    a.grad = torch.ones(3)
    opt.step()
    assert any(q is b for q in opt.param_groups[0]["params"]) and b not in opt.state
    assert torch.equal(b.detach(), torch.ones(3))
    assert not torch.equal(a.detach(), torch.ones(3))


@pytest.mark.parametrize("cls", [FOCUS, FOCUS16bit, Signum, Lion])
def test_sparse_gradients_are_refused(cls):
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = cls(emb.parameters(), lr=0.1)
    emb(torch.tensor([1, 2])).sum().backward()
    with pytest.raises(RuntimeError, match="sparse gradients"):
        opt.step()


@pytest.mark.parametrize("cls", [FOCUS, FOCUS16bit, Signum, Lion])
def test_step_returns_closure_loss(cls):
    p = torch.nn.Parameter(torch.ones(2))
    opt = cls([p], lr=0.1)

    def closure():
        opt.zero_grad()
        loss = (p ** 2).sum()
        loss.backward()
        return loss

    assert opt.step(closure).item() == pytest.approx(2.0)
    assert p.detach().tolist() == pytest.approx([0.9, 0.9])


@pytest.mark.parametrize("cls", [FOCUS, FOCUS16bit, Signum, Lion])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_params_train(cls, dtype):
    model, x, y = _mlp_problem()
    model = model.to(dtype)
    x, y = x.to(dtype), y.to(dtype)
    opt = cls(model.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        model.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert all(p.dtype == dtype for p in model.parameters())
    assert loss.item() < 0.7 * first


BAD = [
    (FOCUS, dict(lr=-1.0), "lr"),
    (FOCUS, dict(betas=(1.0, 0.9)), r"betas\[0\]"),
    (FOCUS, dict(betas=(0.9, -0.1)), r"betas\[1\]"),
    (FOCUS, dict(betas=(0.9,)), "betas"),
    (FOCUS, dict(gamma=1.0), "gamma"),
    (FOCUS, dict(weight_decay=-0.1), "weight_decay"),
    (FOCUS, dict(decay_order="algorithm1"), "decay_order"),
    (FOCUS, dict(lr=float("nan")), "lr"),
    (FOCUS16bit, dict(gamma=-0.1), "gamma"),
    (FOCUS16bit, dict(lr=-1e-3), "lr"),
    (FOCUS16bit, dict(fused=True, foreach=True), "fused"),
    (Signum, dict(momentum=1.0), "momentum"),
    (Signum, dict(weight_decay=-1), "weight_decay"),
    (Lion, dict(betas=(0.9, 1.5)), r"betas\[1\]"),
    (Lion, dict(lr="fast"), "lr"),
]


@pytest.mark.parametrize("cls, kwargs, name", BAD)
def test_bad_hyperparameters_name_the_value_and_range(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls([torch.nn.Parameter(torch.ones(1))], **kwargs)


@pytest.mark.parametrize("cls", [FOCUS, FOCUS16bit])
def test_non_contiguous_parameters_take_the_per_tensor_step(cls):
    """The chunked multi-tensor step walks flat views: a channels_last weight must not reach it by default,
    and forcing it there is refused clearly."""
    init = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    grad = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    results = []
    for foreach in (None, False):
        p = torch.nn.Parameter(init.clone(memory_format=torch.channels_last))
        opt = cls([p], lr=0.01, weight_decay=0.1, foreach=foreach)
        for _ in range(3):
            p.grad = grad.clone(memory_format=torch.channels_last)
            opt.step()
        results.append(p.detach())
    torch.testing.assert_close(results[0], results[1], rtol=0, atol=0)
    p = torch.nn.Parameter(init.clone(memory_format=torch.channels_last))
    p.grad = grad.clone(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="contiguous"):
        cls([p], lr=0.01, foreach=True).step()
