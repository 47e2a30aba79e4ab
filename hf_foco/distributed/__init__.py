"""Multi-process training helpers: gradient compression hooks for DDP."""

from .compression import COMPRESSION_HOOKS, CompressionState, register_compression

__all__ = ["COMPRESSION_HOOKS", "CompressionState", "register_compression"]
