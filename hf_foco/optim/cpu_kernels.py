"""Fused multi-tensor CPU steps for foco, FOCUS, Signum and Lion (``cpu_kernels.cpp``), compiled on first use.

Why: a ``torch._foreach_*`` step makes one pass over memory per operation (foco's takes ~14), and an optimizer
step is bound by memory traffic; the fused kernels read and write every tensor once (foco: 20 bytes per fp32
parameter against fused AdamW's 28), in parallel over blocks of every tensor, and so beat torch's fused AdamW
(``scripts/bench_optim.py``).

They are built with ``torch.utils.cpp_extension.load_inline`` (a C++ compiler and ninja are needed) with the
instruction-set flags of the ATen kernels torch dispatches to on this CPU (AVX512, AVX2 or the baseline) and
``-ffp-contract=off``, so each operation rounds exactly as in the foreach path, which stays the reference: the
results are equal bit for bit. The build is cached in torch's extension directory (``$TORCH_EXTENSIONS_DIR``,
default ``~/.cache/torch_extensions``) under a name made of the source's hash and the instruction set: the
first step on a machine compiles for about a minute (announced by a warning; ``hf-foco build-kernels`` does it
ahead of time), later processes load it in milliseconds, and concurrent processes (DDP ranks) wait for one
build, which holds a ``lock`` file in the build directory. A lock older than any build (left by a build that was
killed) is reported with the command that removes it, instead of being waited on forever. Without a compiler,
when the build fails, on other CPUs, or with ``HF_FOCO_CPU_KERNELS=0`` the optimizers take the foreach path
(:mod:`~hf_foco.optim.dispatch` warns once, saying why).
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

from .base import PARAM_DTYPES, group_by_step

ENV_SWITCH = "HF_FOCO_CPU_KERNELS"
SOURCE = Path(__file__).with_name("cpu_kernels.cpp")
FUNCTIONS = ["foco_step", "focus_step", "sign_step"]
# The flags ATen compiles its kernels with for each CPU capability (aten/src/ATen/native/cpu, cmake).
CAPABILITY_FLAGS = {
    "AVX512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c"],
    "AVX2": ["-mavx2", "-mfma", "-mf16c"],
    "DEFAULT": [],
}
BUILD_SECONDS = 60  # what a build takes on a 2-core machine
STALE_LOCK_SECONDS = 15 * 60  # a build lock older than this was left by a build that died


def load() -> ModuleType | str:
    """The compiled module (functions ``foco_step``, ``focus_step``, ``sign_step``), or a one-line reason why
    there is none."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    return build()


def extension_name() -> str | None:
    """The name of this machine's build (source hash and instruction set), None on CPUs without a kernel."""
    capability = torch.backends.cpu.get_cpu_capability()
    if platform.machine().lower() not in ("x86_64", "amd64") or capability not in CAPABILITY_FLAGS:
        return None
    digest = hashlib.sha256((SOURCE.read_text() + torch.__version__).encode()).hexdigest()[:12]
    return f"hf_foco_cpu_{digest}_{capability.lower()}"


@functools.cache
def build() -> ModuleType | str:
    """Build (or load the cached build of) the module; the module, or why there is none (cached: a failed build
    is not retried in this process). ``hf-foco build-kernels`` calls it."""
    name = extension_name()
    if name is None:
        return (f"no kernel for this CPU ({platform.machine()}, ATen capability "
                f"{torch.backends.cpu.get_cpu_capability()})")
    capability = torch.backends.cpu.get_cpu_capability()
    flags = ["-O3", "-fopenmp", "-ffp-contract=off", f"-DCPU_CAPABILITY={capability}",
             f"-DCPU_CAPABILITY_{capability}", *CAPABILITY_FLAGS.get(capability, [])]
    try:
        from torch.utils.cpp_extension import _get_build_directory, load_inline

        directory = Path(_get_build_directory(name, verbose=False))
        stale = wait_for_build_lock(directory / "lock")
        if stale:
            return stale
        if not (directory / f"{name}.so").exists():
            warnings.warn(f"hf_foco: compiling the fused CPU optimizer kernels into {directory} (once per machine, "
                          f"about {BUILD_SECONDS} s; `hf-foco build-kernels` does it ahead of time).", stacklevel=2)
        return load_inline(name, cpp_sources=[SOURCE.read_text()], functions=FUNCTIONS, extra_cflags=flags,
                           extra_ldflags=["-fopenmp"], build_directory=str(directory))
    except Exception as err:  # no compiler, no ninja, a failed build: all mean "use the foreach path"
        return f"the build failed: {str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}"


def wait_for_build_lock(lock: Path, stale_after: float = STALE_LOCK_SECONDS, poll: float = 1.0) -> str | None:
    """Wait while another process builds (its ``lock`` exists and is younger than ``stale_after`` seconds);
    None once it is gone, or the reason to give up on a lock so old that no build holds it any more.

    torch's own loader would wait on such a lock forever. It is reported rather than removed: a lock cannot
    tell a dead build from a very slow one, and two builds writing one directory would corrupt it."""
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return None
        if age > stale_after:
            return (f"a build lock {age / 60:.0f} minutes old, left by a build that was killed, blocks the build: "
                    f"remove it (rm {lock}) and run again")
        time.sleep(poll)


def takes(row: tuple[torch.Tensor, ...], state_dtypes: tuple[torch.dtype, ...]) -> bool:
    """Whether the kernels take a row (param, grad, states..., step): see :func:`refusal`."""
    return refusal(row, state_dtypes) is None


def refusal(row: tuple[torch.Tensor, ...], state_dtypes: tuple[torch.dtype, ...]) -> str | None:
    """Why the kernels cannot take a row (param, grad, states..., step), or None when they can: they take
    plain contiguous CPU tensors with fp32/bf16/fp16 parameters, gradients of the parameter's dtype and states
    of the rule's dtypes."""
    p, g, states = row[0], row[1], row[2:-1]
    if not (type(p) in (torch.Tensor, torch.nn.Parameter) and type(g) is torch.Tensor):
        return f"the kernels take plain tensors, not {type(p).__name__}"
    if not all(t.device.type == "cpu" for t in row[:-1]):
        return f"the CPU kernels take CPU tensors, not {p.device.type} ones"
    if p.dtype not in PARAM_DTYPES or g.dtype != p.dtype:
        return f"{g.dtype} gradients on {p.dtype} parameters"
    if any(s.dtype != d for s, d in zip(states, state_dtypes)):
        return "states of another dtype than the rule's"
    if not all(t.is_contiguous() for t in row[:-1]):
        return "non-contiguous tensors (e.g. channels_last or transposed views)"
    return None


def by_step(tensorlists: list[list[torch.Tensor]]):
    """Count the step of every row, then yield ``(columns, step)`` for each group of rows at one step count
    (the kernels take the step's bias corrections as scalars)."""
    if not tensorlists[0]:
        return
    torch._foreach_add_(tensorlists[-1], 1)
    for columns, step in group_by_step(tensorlists):
        yield columns[:-1], step
