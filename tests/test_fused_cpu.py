"""The fused CPU kernels (hf_foco.optim.cpu_kernels) against the pure-PyTorch paths they replace.

The kernels perform the multi-tensor step's operations in the same order with the same roundings, so every
comparison here is exact (parameters and states, bit for bit), for fp32 and 16-bit parameters alike. The
kernels are compiled once per machine (about a minute) and cached in torch's extension directory.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from hf_foco.optim import FOCUS, FOCUS16bit, Lion, Signum, cpu_kernels

# Odd sizes, the vector width's neighbours, an empty tensor, several kernel blocks (32768 elements each).
SHAPES = [(0,), (1,), (7,), (31, 1), (32,), (33,), (5, 11), (70001,)]
CONFIGS = [
    (FOCUS16bit, dict(lr=1e-3, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1)),
    (FOCUS16bit, dict(lr=1e-3, betas=(0.3, 0.6), gamma=0.0, weight_decay=0.0)),
    (FOCUS, dict(lr=1e-3, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.1)),
    (FOCUS, dict(lr=1e-3, betas=(0.3, 0.4), gamma=0.1, weight_decay=0.1, decay_order="paper")),
    (Signum, dict(lr=1e-3, momentum=0.9, weight_decay=0.1)),
    (Signum, dict(lr=1e-3, momentum=0.2, weight_decay=0.0)),
    (Lion, dict(lr=1e-3, betas=(0.9, 0.99), weight_decay=0.5)),
    (Lion, dict(lr=1e-3, betas=(0.2, 0.3), weight_decay=0.0)),
]
IDS = [f"{cls.__name__}-{i}" for i, (cls, _) in enumerate(CONFIGS)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
STEPS = 4


@pytest.fixture(scope="module")
def kernels():
    module = cpu_kernels.kernels()
    if module is None:
        pytest.skip("the fused CPU kernels could not be built here (see the warning)")
    return module


def _problem(dtype, shapes=SHAPES, seed=0):
    gen = torch.Generator().manual_seed(seed)
    init = [torch.randn(s, generator=gen).to(dtype) for s in shapes]
    grads = [[torch.randn(s, generator=gen).to(dtype) for s in shapes] for _ in range(STEPS)]
    return init, grads


def _run(cls, kwargs, init, grads, layout=lambda t: t, **mode):
    """Parameters and every state tensor after STEPS steps, flattened into one fp32 vector."""
    params = [torch.nn.Parameter(layout(x.clone())) for x in init]
    opt = cls(params, **kwargs, **mode)
    for step_grads in grads:
        for p, g in zip(params, step_grads):
            p.grad = layout(g.clone())
        opt.step()
    states = [t for p in params for name, t in opt.state[p].items() if name != "step"]
    return torch.cat([t.detach().flatten().float() for t in params + states])


def _assert_identical(a, b):
    assert a.shape == b.shape
    assert torch.equal(a.view(torch.int32), b.view(torch.int32)), f"{(a != b).sum()} elements differ"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls, kwargs", CONFIGS, ids=IDS)
def test_fused_step_equals_the_foreach_step_bit_for_bit(kernels, cls, kwargs, dtype):
    init, grads = _problem(dtype)
    _assert_identical(_run(cls, kwargs, init, grads, fused=True), _run(cls, kwargs, init, grads, foreach=True))


@pytest.mark.parametrize("cls, kwargs", CONFIGS[::2], ids=IDS[::2])
def test_fused_step_equals_the_single_tensor_step_on_non_contiguous_tensors(kernels, cls, kwargs):
    """Transposed parameters cannot take the kernel; they go to the per-tensor reference, next to
    contiguous ones that do."""
    init, grads = _problem(torch.float32, shapes=[(6, 9), (40, 3), (33,)])
    transposed = lambda t: t.t() if t.dim() == 2 else t  # noqa: E731
    fused = _run(cls, kwargs, init, grads, transposed, fused=True)
    _assert_identical(fused, _run(cls, kwargs, init, grads, transposed, foreach=False))


@pytest.mark.parametrize("cls, kwargs", CONFIGS[::2], ids=IDS[::2])
def test_fused_step_does_not_depend_on_the_thread_count(kernels, cls, kwargs):
    init, grads = _problem(torch.bfloat16, shapes=[(100003,), (65536,)])
    reference = _run(cls, kwargs, init, grads, foreach=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _assert_identical(_run(cls, kwargs, init, grads, fused=True), reference)
    finally:
        torch.set_num_threads(threads)


def test_rows_the_kernels_cannot_take_keep_the_reference_path(kernels):
    p = torch.zeros(4, 3)
    contiguous = [p, torch.zeros(4, 3), torch.zeros(4, 3), torch.tensor(0.0)]
    transposed = [p.t(), torch.zeros(3, 4), torch.zeros(3, 4), torch.tensor(0.0)]
    fp32_grad = [p.bfloat16(), torch.zeros(4, 3), torch.zeros(4, 3), torch.tensor(0.0)]
    rows, others = cpu_kernels.split_rows([list(c) for c in zip(contiguous, transposed, fp32_grad)], (torch.float32,))
    assert [t is contiguous[0] for t in rows[0]] == [True]
    assert len(others[0]) == 2 and others[0][0] is transposed[0] and others[0][1] is fp32_grad[0]


@pytest.mark.parametrize("cls", [FOCUS, FOCUS16bit, Signum, Lion])
def test_the_fused_kernel_is_the_default_on_cpu(kernels, monkeypatch, cls):
    calls = []

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(kernels, name)

    monkeypatch.setattr(cpu_kernels, "kernels", lambda: Spy())
    p = torch.nn.Parameter(torch.ones(5))
    p.grad = torch.ones(5)
    cls([p], lr=0.1).step()
    assert len(calls) == 1


@pytest.fixture
def fresh_fallback():
    """Forget earlier fallback warnings (each reason warns once per process), before and after."""
    cpu_kernels._fall_back.cache_clear()
    yield
    cpu_kernels._fall_back.cache_clear()


@pytest.mark.parametrize("cls, kwargs", CONFIGS[::2], ids=IDS[::2])
def test_switched_off_kernels_warn_once_and_fall_back(monkeypatch, fresh_fallback, cls, kwargs):
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
    init, grads = _problem(torch.float32, shapes=[(7,), (33,)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = [_run(cls, kwargs, init, grads), _run(cls, kwargs, init, grads, fused=True)]
    messages = [str(w.message) for w in caught if "fused CPU optimizer steps unavailable" in str(w.message)]
    assert len(messages) == 1 and "HF_FOCO_CPU_KERNELS=0" in messages[0]
    reference = _run(cls, kwargs, init, grads, foreach=True)
    for result in fallback:
        _assert_identical(result, reference)


def test_a_failed_build_falls_back_with_its_reason(monkeypatch, tmp_path, fresh_fallback):
    """No compiler: the build fails, the optimizers say why once and take the foreach step."""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    cpu_kernels._build.cache_clear()
    try:
        with pytest.warns(UserWarning, match="unavailable .*build failed"):
            assert cpu_kernels.kernels() is None
        init, grads = _problem(torch.float32, shapes=[(9,)])
        _assert_identical(_run(Lion, {}, init, grads, fused=True), _run(Lion, {}, init, grads, foreach=True))
    finally:
        cpu_kernels._build.cache_clear()  # the next call loads the cached build again


@pytest.mark.parametrize("cls", [FOCUS, FOCUS16bit, Signum, Lion])
def test_float64_parameters_are_refused(cls):
    with pytest.raises(ValueError, match="float64 parameters are not supported.*float32"):
        cls([torch.nn.Parameter(torch.ones(2, dtype=torch.float64))], lr=0.1)
    opt = cls([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="float64"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]})
