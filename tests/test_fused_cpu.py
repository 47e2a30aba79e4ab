"""The fused CPU kernels (hf_foco.optim.cpu_kernels) against the pure-PyTorch paths they replace.

The kernels perform the multi-tensor step's operations in the same order with the same roundings, so every
comparison here is exact (parameters and states, bit for bit), for fp32 and 16-bit parameters alike. The
kernels are compiled once per machine (about a minute) and cached in torch's extension directory: the tests
that need them are marked slow; those of the fallback and of the build lock compile nothing.
"""

from __future__ import annotations

import os
import threading
import time
import warnings

import pytest
import torch

from hf_foco.optim import FOCUS, FOCUS16bit, Lion, Signum, cpu_kernels, dispatch

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
    module = cpu_kernels.load()
    if isinstance(module, str):
        pytest.skip(f"the fused CPU kernels could not be built here ({module})")
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


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("cls, kwargs", CONFIGS, ids=IDS)
def test_fused_step_equals_the_foreach_step_bit_for_bit(kernels, cls, kwargs, dtype):
    init, grads = _problem(dtype)
    _assert_identical(_run(cls, kwargs, init, grads, fused=True), _run(cls, kwargs, init, grads, foreach=True))


@pytest.mark.slow
@pytest.mark.parametrize("cls, kwargs", CONFIGS[::2], ids=IDS[::2])
def test_the_default_step_equals_the_single_tensor_step_on_non_contiguous_tensors(kernels, cls, kwargs):
    """Transposed parameters cannot take the kernel: by default they go to the per-tensor reference, next to
    contiguous ones that take it; fused=True refuses them, naming why."""
    init, grads = _problem(torch.float32, shapes=[(6, 9), (40, 3), (33,)])
    transposed = lambda t: t.t() if t.dim() == 2 else t  # noqa: E731
    _assert_identical(_run(cls, kwargs, init, grads, transposed), _run(cls, kwargs, init, grads, transposed,
                                                                        foreach=False))
    with pytest.raises(ValueError, match=r"fused=True, but no fused step takes 2 of the 3 tensors \(non-contiguous"):
        _run(cls, kwargs, init, grads, transposed, fused=True)


@pytest.mark.slow
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


def test_the_kernels_take_plain_contiguous_rows_of_the_rule_dtypes_and_say_why_not():
    step = torch.tensor(0.0)
    p = torch.zeros(4, 3)
    fp32 = (torch.float32,)
    assert cpu_kernels.takes((p, torch.zeros(4, 3), torch.zeros(4, 3), step), fp32)
    assert "non-contiguous" in cpu_kernels.refusal((p.t(), torch.zeros(3, 4), torch.zeros(3, 4), step), fp32)
    assert cpu_kernels.refusal((p.bfloat16(), torch.zeros(4, 3), torch.zeros(4, 3), step), fp32) == (
        "torch.float32 gradients on torch.bfloat16 parameters")
    assert "another dtype" in cpu_kernels.refusal((p, torch.zeros(4, 3), torch.zeros(4, 3).half(), step), fp32)
    assert "meta" in cpu_kernels.refusal((p.to("meta"), p.to("meta"), p.to("meta"), step), fp32)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [FOCUS, FOCUS16bit, Signum, Lion])
def test_the_fused_kernel_is_the_default_on_cpu(kernels, monkeypatch, cls):
    calls = []

    class Spy:
        def __getattr__(self, name):
            calls.append(name)
            return getattr(kernels, name)

    monkeypatch.setattr(cpu_kernels, "load", lambda: Spy())
    p = torch.nn.Parameter(torch.ones(5))
    p.grad = torch.ones(5)
    cls([p], lr=0.1).step()
    assert len(calls) == 1


@pytest.fixture
def fresh_fallback():
    """Forget earlier fallback warnings (each reason warns once per process), before and after."""
    dispatch._warn_fallback.cache_clear()
    yield
    dispatch._warn_fallback.cache_clear()


@pytest.mark.parametrize("cls, kwargs", CONFIGS[::2], ids=IDS[::2])
def test_switched_off_kernels_warn_once_and_fall_back(monkeypatch, fresh_fallback, cls, kwargs):
    """Unset, the step falls back to the foreach step (one warning naming why); fused=True is an error."""
    monkeypatch.setenv(cpu_kernels.ENV_SWITCH, "0")
    init, grads = _problem(torch.float32, shapes=[(7,), (33,)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fallback = [_run(cls, kwargs, init, grads), _run(cls, kwargs, init, grads)]
    messages = [str(w.message) for w in caught if "fused optimizer steps unavailable" in str(w.message)]
    assert len(messages) == 1 and "HF_FOCO_CPU_KERNELS=0" in messages[0]
    reference = _run(cls, kwargs, init, grads, foreach=True)
    for result in fallback:
        _assert_identical(result, reference)
    with pytest.raises(ValueError, match=r"fused=True, but no fused step takes 2 of the 2 tensors "
                                         r"\(HF_FOCO_CPU_KERNELS=0\); leave fused unset"):
        _run(cls, kwargs, init, grads, fused=True)


def test_a_failed_build_falls_back_with_its_reason(monkeypatch, tmp_path, fresh_fallback):
    """No compiler: the build fails, the optimizers say why once and take the foreach step. (Under its own
    extension name: torch numbers a name's builds per process, and a second build of the real name in this
    process would be compiled anew as ``<name>_v1``.)"""
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "extension_name", lambda: "hf_foco_cpu_failing_build")
    cpu_kernels.build.cache_clear()
    try:
        with pytest.warns(UserWarning, match="compiling the fused CPU optimizer kernels .* about 60 s"):
            reason = cpu_kernels.load()
        assert reason.startswith("the build failed")
        init, grads = _problem(torch.float32, shapes=[(9,)])
        with pytest.warns(UserWarning, match="unavailable .*build failed"):
            result = _run(Lion, {}, init, grads)
        _assert_identical(result, _run(Lion, {}, init, grads, foreach=True))
    finally:
        cpu_kernels.build.cache_clear()  # the next call loads the cached build again


def test_a_stale_build_lock_is_reported_with_the_path_to_remove(monkeypatch, tmp_path, fresh_fallback):
    """A build killed mid-way leaves torch's lock file, on which every later build would wait forever."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "extension_name", lambda: "hf_foco_cpu_stale_lock")
    lock = tmp_path / "hf_foco_cpu_stale_lock" / "lock"
    lock.parent.mkdir()
    lock.touch()
    old = time.time() - cpu_kernels.STALE_LOCK_SECONDS - 60
    os.utime(lock, (old, old))
    cpu_kernels.build.cache_clear()
    try:
        reason = cpu_kernels.load()
    finally:
        cpu_kernels.build.cache_clear()
    assert f"remove it (rm {lock})" in reason and "killed" in reason
    assert lock.exists()  # reported, not removed: a lock cannot tell a dead build from a slow one


def test_a_fresh_build_lock_is_waited_for(tmp_path):
    """Another process building holds the lock: wait until it is released (no verdict on a young lock)."""
    lock = tmp_path / "lock"
    lock.touch()
    threading.Timer(0.3, lock.unlink).start()
    start = time.monotonic()
    assert cpu_kernels.wait_for_build_lock(lock, poll=0.05) is None
    assert 0.25 < time.monotonic() - start < 5
    lock.touch()
    assert "left by a build that was killed" in cpu_kernels.wait_for_build_lock(lock, stale_after=0.1, poll=0.05)


@pytest.mark.parametrize("cls", [FOCUS, FOCUS16bit, Signum, Lion])
def test_float64_parameters_are_refused(cls):
    with pytest.raises(ValueError, match="float64 parameters are not supported.*float32"):
        cls([torch.nn.Parameter(torch.ones(2, dtype=torch.float64))], lr=0.1)
    opt = cls([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    with pytest.raises(ValueError, match="float64"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(2, dtype=torch.float64))]})
