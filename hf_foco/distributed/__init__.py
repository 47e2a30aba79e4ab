"""Multi-process training: DDP gradient compression, sharding detection, the collectives optimizers use, and
norms of FSDP-sharded tensors."""

from .collectives import all_reduce_mean
from .compression import COMPRESSION_HOOKS, CompressionState, register_compression
from .norms import all_finite, squared_norms
from .sharding import refuse_sharding, sharding_in_use, sharding_refusal
from .wrappers import find_ddp, unwrap_optimizer

__all__ = ["COMPRESSION_HOOKS", "CompressionState", "all_finite", "all_reduce_mean", "find_ddp", "refuse_sharding",
           "register_compression", "sharding_in_use", "sharding_refusal", "squared_norms", "unwrap_optimizer"]
