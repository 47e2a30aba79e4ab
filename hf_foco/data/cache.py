"""hf_foco's own cache for derived data (trained tokenizers, packed blocks), keyed by content hashes."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path


def default_cache_dir() -> str:
    """``$HF_FOCO_CACHE``, else ``~/.cache/hf_foco``."""
    return os.environ.get("HF_FOCO_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "hf_foco"))


def cache_path(cache_dir: str | os.PathLike, kind: str, *key_parts) -> str:
    """``cache_dir/kind/<hash of key_parts>``: every input that changes the result must be a key part."""
    key = hashlib.sha256("|".join(map(str, key_parts)).encode()).hexdigest()[:20]
    return os.path.join(os.fspath(cache_dir), kind, key)


def save_atomically(obj, path: str) -> None:
    """``obj.save_pretrained`` / ``obj.save_to_disk`` into ``path`` via a temporary sibling and a rename, so
    a crashed or concurrent writer never leaves a half-written entry that a later run would trust."""
    parent = Path(path).parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-")
    try:
        (obj.save_pretrained if hasattr(obj, "save_pretrained") else obj.save_to_disk)(tmp)
        os.replace(tmp, path)
    except OSError:
        if not Path(path).exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
