"""glibc malloc settings that keep a training process's memory mapped between steps.

Why: PyTorch's CPU tensors come from ``malloc``. glibc serves every block above its mmap threshold (128 KiB,
rising to at most 32 MiB) with a fresh ``mmap`` and returns it to the OS on ``free``, and trims the heap's top
once 128 KiB lie free. A training step allocates and frees hundreds of MB of activations and gradients, so
every step maps them again and touches every page anew: on the gpt2-nano recipe that was ~100k minor page
faults and ~0.2 s of kernel time per step, a fifth of the step (``scripts/bench_train.py``). Keeping large
blocks in the heap (no mmap), trimming only above 1 GiB free and growing the heap 64 MiB at a time lets the
next step reuse the same, already mapped pages. The cost: up to 1 GiB of freed memory stays with the process.

Call :func:`tune_allocator` at process start, before the large allocations (``hf_foco.pretrain.main`` and
``hf-foco run`` do; ``hf_foco.install()`` does not, as a library call changes no process-wide setting). It is
a no-op off glibc (macOS, Windows, musl) and with ``HF_FOCO_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import ctypes
import os
import platform

ENV_SWITCH = "HF_FOCO_MALLOC_TUNING"
# mallopt parameters (glibc <malloc.h>) and the values set.
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4
SETTINGS = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 1 << 30, M_TOP_PAD: 64 << 20}


def tune_allocator() -> bool:
    """Apply :data:`SETTINGS` with glibc's ``mallopt``; True when they were applied."""
    if os.environ.get(ENV_SWITCH, "1") == "0" or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(mallopt(param, value) == 1 for param, value in SETTINGS.items())
