"""Multi-process training: DDP gradient compression, sharding detection and the collectives optimizers use."""

from .collectives import all_reduce_mean
from .compression import COMPRESSION_HOOKS, CompressionState, register_compression
from .sharding import refuse_sharding, sharding_in_use, sharding_refusal

__all__ = ["COMPRESSION_HOOKS", "CompressionState", "all_reduce_mean", "refuse_sharding", "register_compression",
           "sharding_in_use", "sharding_refusal"]
