"""Is the model sharded (FSDP) or flattened (DeepSpeed)? And the one message that refuses it.

Optimizers that act on whole weight matrices (K-FAC, FOP, Muon) cannot work on FSDP's DTensor shards or on
DeepSpeed's flat parameter shards; the training arguments refuse such a launch before anything is built,
and the optimizer refuses a sharded model at construction, both with :func:`sharding_refusal`.
"""

from __future__ import annotations

import os

from torch import nn

_REASONS = {"DeepSpeed": "DeepSpeed hands the optimizer flattened parameter shards",
            "FSDP": "FSDP shards the weight matrices into DTensors"}


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def sharding_in_use(model: nn.Module | None = None) -> str | None:
    """``"DeepSpeed"`` or ``"FSDP"`` when ``model`` is sharded, or will be by the launcher (accelerate launch
    exports ACCELERATE_USE_DEEPSPEED / ACCELERATE_USE_FSDP); None otherwise."""
    if _env_flag("ACCELERATE_USE_DEEPSPEED") or type(model).__name__ == "DeepSpeedEngine":
        return "DeepSpeed"
    if _env_flag("ACCELERATE_USE_FSDP") or type(model).__name__ == "FullyShardedDataParallel" or (
            model is not None and any(type(p).__name__ == "DTensor" for p in model.parameters())):
        return "FSDP"
    return None


def sharding_refusal(who: str, backend: str) -> ValueError:
    """The error for optimizer ``who`` under ``backend`` ("FSDP" or "DeepSpeed"), naming the fix."""
    return ValueError(f"{who} works on whole weight matrices (Kronecker factors, orthogonalisation), but "
                      f"{_REASONS[backend]}. "
                      "Train it with plain data parallelism (accelerate launch --multi_gpu, without --fsdp/--deepspeed "
                      "or an FSDP/DeepSpeed accelerate config), or choose an optimizer that supports sharding, such as "
                      "foco or adamw.")


def refuse_sharding(model: nn.Module | None, who: str) -> None:
    """Raise :func:`sharding_refusal` when ``model`` is (or will be) sharded."""
    backend = sharding_in_use(model)
    if backend:
        raise sharding_refusal(who, backend)
