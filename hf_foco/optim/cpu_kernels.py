"""Fused multi-tensor CPU steps for foco, FOCUS, Signum and Lion (``cpu_kernels.cpp``), compiled on first use.

Why: a ``torch._foreach_*`` step makes one pass over memory per operation (foco's takes ~14), and an optimizer
step is bound by memory traffic; the fused kernels read and write every tensor once (foco: 20 bytes per fp32
parameter against fused AdamW's 28), in parallel over blocks of every tensor, and so beat torch's fused AdamW
(``scripts/bench_optim.py``).

They are built with ``torch.utils.cpp_extension.load_inline`` (a C++ compiler is needed, no other dependency)
with the instruction-set flags of the ATen kernels torch dispatches to on this CPU (AVX512, AVX2 or the
baseline) and ``-ffp-contract=off``, so each operation rounds exactly as in the foreach path, which stays the
reference: the results are equal bit for bit. The build is cached in torch's extension directory
(``$TORCH_EXTENSIONS_DIR``, default ``~/.cache/torch_extensions``) under a name made of the source's hash and
the instruction set: the first step on a machine spends about a minute compiling, later processes load it in
milliseconds (and concurrent processes, such as DDP ranks, wait for one build). Without a compiler, when the
build fails, on other CPUs, or with ``HF_FOCO_CPU_KERNELS=0`` the optimizers warn once and take the foreach path.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import platform
import warnings
from pathlib import Path

import torch

from .base import PARAM_DTYPES, group_by_device_and_dtype, step_key

ENV_SWITCH = "HF_FOCO_CPU_KERNELS"
SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FUNCTIONS = ["foco_step", "focus_step", "sign_step"]
# The flags ATen compiles its kernels with for each CPU capability (aten/src/ATen/native/cpu, cmake).
CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}
logger = logging.getLogger(__name__)


def kernels():
    """The compiled module (functions ``foco_step``, ``focus_step``, ``sign_step``), or None after one warning
    saying why the multi-tensor path is used instead."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return _fall_back(f"{ENV_SWITCH}=0")
    module = _build()
    return _fall_back(module) if isinstance(module, str) else module


@functools.cache
def _fall_back(reason: str) -> None:
    warnings.warn(f"hf_foco: fused CPU optimizer steps unavailable ({reason}); using the multi-tensor "
                  "(foreach) steps, which compute the same update more slowly.", stacklevel=4)


@functools.cache
def _build():
    """The module, or a one-line reason why there is none (cached: a failed build is not retried)."""
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() not in ("x86_64", "amd64") or capability not in CAPABILITY_FLAGS:
        return f"no kernel for this CPU ({platform.machine()}, ATen capability {capability})"
    source = SOURCE.read_text()
    digest = hashlib.sha256((source + torch.__version__).encode()).hexdigest()[:12]
    name = f"hf_foco_cpu_{digest}_{capability.lower()}"
    flags = ["-O3", "-fopenmp", "-ffp-contract=off", f"-DCPU_CAPABILITY={capability}",
             f"-DCPU_CAPABILITY_{capability}", *CAPABILITY_FLAGS[capability]]
    logger.info("Loading hf_foco's fused CPU optimizer kernels %s (compiled once, about a minute)", name)
    try:
        from torch.utils.cpp_extension import load_inline

        return load_inline(name, cpp_sources=[source], functions=FUNCTIONS, extra_cflags=flags,
                           extra_ldflags=["-fopenmp"])
    except Exception as err:  # no compiler, no ninja, a failed build: all mean "use the foreach path"
        return f"the build failed: {str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}"


def default_fused(params: list[torch.Tensor]) -> bool:
    """Whether a step takes the fused kernels by default: CPU parameters and kernels available (rows the kernels
    cannot take still go to the reference paths, :func:`split_rows`)."""
    return all(p.device.type == "cpu" for p in params) and kernels() is not None


def split_rows(tensorlists: list[list[torch.Tensor]], state_dtypes: tuple[torch.dtype, ...]):
    """(rows the kernels take, the other rows), each as a list of columns like ``tensorlists`` (params,
    grads, the states in ``state_dtypes``, then the step counters).

    The kernels take plain contiguous CPU tensors with fp32/bf16/fp16 parameters, gradients of the
    parameter's dtype and states of the declared dtypes; every other row (non-contiguous, another device,
    DTensor shards, fp32 gradients on a bf16 parameter) keeps the reference path, as do all rows when the
    kernels are unavailable.
    """
    columns = len(tensorlists)
    fused, other = [[] for _ in range(columns)], [[] for _ in range(columns)]
    available = kernels() is not None
    for row in zip(*tensorlists):
        p, g, states = row[0], row[1], row[2:-1]
        ok = (available and type(p) in (torch.Tensor, torch.nn.Parameter) and type(g) is torch.Tensor
              and p.device.type == "cpu" and p.dtype in PARAM_DTYPES and g.dtype == p.dtype
              and all(s.dtype == d for s, d in zip(states, state_dtypes))
              and all(t.is_contiguous() and t.device.type == "cpu" for t in row[:-1]))
        for column, tensor in zip(fused if ok else other, row):
            column.append(tensor)
    return fused, other


def by_step(tensorlists: list[list[torch.Tensor]]):
    """Count the step of every row, then yield ``(columns, step)`` for each group of rows at one step count
    (the kernels take the step's bias corrections as scalars)."""
    if not tensorlists[0]:
        return
    torch._foreach_add_(tensorlists[-1], 1)
    for columns in group_by_device_and_dtype(tensorlists, key=step_key):
        yield columns[:-1], columns[-1][0].item()
