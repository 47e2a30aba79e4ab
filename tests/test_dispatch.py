"""Which implementation steps which tensors (torch's meanings of ``foreach`` and ``fused``), and the compiled
multi-tensor step that CUDA takes, run here on CPU tensors through Inductor's CPU backend (the same code)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch._dynamo.utils import counters

from hf_foco.optim import FOCUS, FOCUS16bit, Lion, Signum, cpu_kernels, dispatch

CLASSES = [FOCUS, FOCUS16bit, Signum, Lion]


@pytest.fixture
def calls(monkeypatch):
    """Replace every implementation of each class's rule by a recorder: ``calls`` lists (implementation, number
    of tensors) in call order. The CPU kernels count as available without being built."""
    record: list[tuple[str, int]] = []
    monkeypatch.setattr(cpu_kernels, "load", lambda: object())
    for cls in CLASSES:
        rule = cls.rule

        def recorder(name):
            def fn(*args, **kwargs):
                tensors = args[1] if name == "kernel" else args[0]  # kernel(module, columns, step, ...)
                record.append((name, len(tensors[0]) if name == "kernel" else len(tensors)))
            return fn

        spy = dataclasses.replace(rule, single=recorder("single"), multi=recorder("multi"),
                                  kernel=recorder("kernel"))
        spy.__dict__["compiled_step"] = lambda batches: record.append(
            ("compiled", sum(len(lists[0]) for lists, _, _ in batches)))
        monkeypatch.setattr(cls, "rule", spy)
    return record


def _step(cls, params, **mode):
    for p in params:
        p.grad = torch.ones_like(p)
    cls(params, lr=0.1, **mode).step()


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("mode, expected", [
    (dict(foreach=False), "single"),
    (dict(foreach=True), "multi"),
    (dict(fused=True), "kernel"),
    (dict(fused=True, foreach=False), "kernel"),
    (dict(fused=False), "multi"),
    (dict(), "kernel"),
], ids=str)
def test_foreach_and_fused_have_torchs_meanings(calls, cls, mode, expected):
    _step(cls, [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 2))], **mode)
    assert calls == [(expected, 2)]


@pytest.mark.parametrize("cls", CLASSES)
def test_unset_takes_the_fastest_step_for_each_tensor(calls, cls):
    """The kernel takes contiguous rows; a transposed one goes to the single-tensor step."""
    _step(cls, [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 3).t()),
                torch.nn.Parameter(torch.ones(4))])
    assert calls == [("kernel", 2), ("single", 1)]


def test_fused_and_foreach_together_are_refused():
    with pytest.raises(ValueError, match="choose fused=True or foreach=True, not both"):
        Lion([torch.nn.Parameter(torch.ones(2))], fused=True, foreach=True)


def test_fused_without_a_fused_step_is_an_error_naming_why(calls, monkeypatch):
    monkeypatch.setattr(cpu_kernels, "load", lambda: "no compiler here")
    with pytest.raises(ValueError, match=r"Signum: fused=True, but no fused step takes 1 of the 1 tensors "
                                         r"\(no compiler here\); leave fused unset"):
        _step(Signum, [torch.nn.Parameter(torch.ones(3))], fused=True)
    with pytest.raises(ValueError, match=r"no fused step takes 1 of the 2 tensors \(non-contiguous"), \
            dispatch.fused_implementation("cpu", "kernels"):
        monkeypatch.setattr(cpu_kernels, "load", lambda: object())
        _step(Lion, [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 3).t())], fused=True)
    assert calls == []  # nothing stepped before the refusal


@pytest.mark.parametrize("cls", CLASSES)
def test_the_compiled_step_makes_one_call_for_all_groups(calls, cls):
    params = [torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2, 3).t()),
              torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))]
    for p in params:
        p.grad = torch.ones_like(p)
    optimizer = cls([{"params": params[:2]}, {"params": params[2:], "weight_decay": 0.0}], lr=0.1)
    with dispatch.fused_implementation("cpu", "compiled"):
        optimizer.step()
        optimizer.step()
    assert calls == [("compiled", 3), ("compiled", 3)]


def test_hyperparameter_tensors_are_rewritten_only_where_a_value_changed(monkeypatch):
    hypers = dispatch.HyperTensors()
    tensor = hypers.get("group", (0.1, 0.9), torch.device("cpu"))
    fills = []
    monkeypatch.setattr(torch.Tensor, "fill_", lambda self, value: fills.append(value))
    assert hypers.get("group", (0.1, 0.9), torch.device("cpu")) is tensor and fills == []
    assert hypers.get("group", (0.2, 0.9), torch.device("cpu")) is tensor and fills == [0.2]
    monkeypatch.undo()
    assert tensor.tolist() == pytest.approx([0.1, 0.9])  # the recorder above did not write


# -- the compiled step (CUDA's fused step), compiled here for CPU tensors ---------------------------------

STEPS = 5
COMPILED = [
    (FOCUS16bit, dict(betas=(0.9, 0.99), gamma=0.2)),
    (FOCUS, dict(betas=(0.9, 0.99), gamma=0.2)),
    (FOCUS, dict(betas=(0.8, 0.9), gamma=0.1, decay_order="paper")),
    (Signum, dict(momentum=0.9)),
    (Lion, dict(betas=(0.9, 0.99))),
]


def _mixed_problem():
    """Parameter views of one buffer (as FSDP1 or a flat-parameter wrapper hands them over), a transposed
    one, and bf16 parameters, in two groups, with their gradients for every step."""
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(600, generator=gen)
    params = [base[:100].view(10, 10), base[200:500], torch.randn(6, 9, generator=gen).t(),
              torch.randn(33, generator=gen).bfloat16(), torch.randn(5, 4, generator=gen).bfloat16()]
    grads = [[torch.randn(p.shape, generator=gen).to(p.dtype) for p in params] for _ in range(STEPS)]
    return params, grads


def _train(cls, kwargs, monkeypatch=None):
    """STEPS steps with a learning rate that changes every step: the single-tensor reference (equal to the
    foreach step bit for bit, and it takes the transposed parameter), or (with ``monkeypatch``)
    the compiled one, forbidden to read any tensor's value on the host after its first step. Returns the
    parameters, their states and step counts, and the number of calls of the compiled step."""
    params, grads = _mixed_problem()
    groups = [{"params": params[:3], "weight_decay": 0.1}, {"params": params[3:], "weight_decay": 0.0}]
    compiled = monkeypatch is not None
    optimizer = cls(groups, lr=1e-2, **kwargs, **({} if compiled else {"foreach": False}))
    calls = []
    if compiled:
        step = cls.rule.compiled_step
        monkeypatch.setitem(cls.rule.__dict__, "compiled_step", lambda batches: calls.append(1) or step(batches))
    for index, step_grads in enumerate(grads):
        for p, g in zip(params, step_grads):
            p.grad = g.clone()
        for group in optimizer.param_groups:
            group["lr"] = 1e-2 * (1 + index)
        if compiled and index == 1:  # compiled by the first step; from now on no value may cross to the host
            for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
                monkeypatch.setattr(torch.Tensor, name, _host_read)
        with dispatch.fused_implementation("cpu", "compiled" if compiled else "kernels"):
            optimizer.step()
    if compiled:
        monkeypatch.undo()
    states = [[t for name, t in optimizer.state[p].items() if name != "step"] for p in params]
    steps = [optimizer.state[p]["step"].item() for p in params]
    return params, states, steps, len(calls)


def _host_read(*args, **kwargs):
    raise AssertionError("the compiled step read a tensor's value on the host")


@pytest.mark.slow
@pytest.mark.parametrize("cls, kwargs", COMPILED, ids=lambda v: v.__name__ if isinstance(v, type) else str(v))
def test_the_compiled_step_equals_the_foreach_step_up_to_rounding_and_compiles_once(cls, kwargs, monkeypatch):
    """One compiled call per step for both groups; one graph across steps and learning-rate changes; no
    host synchronisation after the first step; parameters and states equal the reference's but for
    the order of fp32 roundings: a few fp32 ulps of the problem's largest value per step, plus one ulp of a
    16-bit tensor where such a difference lands next to one of its rounding boundaries."""
    torch._dynamo.reset()
    counters.clear()
    params, states, steps, calls = _train(cls, kwargs, monkeypatch)
    assert counters["stats"]["unique_graphs"] == 1
    assert calls == STEPS
    ref_params, ref_states, ref_steps, _ = _train(cls, kwargs)
    assert steps == ref_steps == [float(STEPS)] * len(params)
    init, grads = _mixed_problem()
    scale = max(t.float().abs().max() for t in [*init, *(g for step in grads for g in step)])
    for got, want, got_states, want_states in zip(params, ref_params, states, ref_states):
        for a, b in [(got, want), *zip(got_states, want_states)]:
            bound = STEPS * 4 * torch.finfo(torch.float32).eps * scale + torch.finfo(b.dtype).eps * b.float().abs().max()
            assert a.dtype == b.dtype and (a.float() - b.float()).abs().max() <= bound
