"""GPT-2 model presets: a name picks a size, from CPU-minutes smoke runs to the paper's 124M/350M models.

Presets are plain ``GPT2Config`` keyword dicts so that benchmarks, recipes and tests build the very same
models from a name, offline (no ``from_pretrained`` download). Dropout is off in every preset, as in
nanoGPT's pretraining runs: with a single pass over the data it only slows learning.
"""

from __future__ import annotations

import difflib
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, PretrainedConfig, PreTrainedModel

_NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)

PRESETS: dict[str, dict[str, Any]] = {
    # ~1.3M parameters with a 4096-token BPE (0.8M outside the embeddings): minutes on 2 CPU cores.
    # Token id 0 is <|endoftext|> in hf_foco's trained BPE (hf_foco.data.tokenizer).
    "gpt2-nano": dict(n_layer=4, n_embd=128, n_head=4, n_positions=256, vocab_size=4096, bos_token_id=0,
                      eos_token_id=0, **_NO_DROPOUT),
    # ~14M parameters with an 8192-token BPE (10.6M outside the embeddings): a CPU hour, GPU seconds.
    "gpt2-micro": dict(n_layer=6, n_embd=384, n_head=6, n_positions=512, vocab_size=8192, bos_token_id=0,
                       eos_token_id=0, **_NO_DROPOUT),
    # The released GPT-2 sizes (124M and 350M with GPT-2's 50257-token vocabulary).
    "gpt2-small": dict(n_layer=12, n_embd=768, n_head=12, n_positions=1024, vocab_size=50257, **_NO_DROPOUT),
    "gpt2-medium": dict(n_layer=24, n_embd=1024, n_head=16, n_positions=1024, vocab_size=50257, **_NO_DROPOUT),
}


def is_preset(name: str | None) -> bool:
    return name in PRESETS


def preset_config(name: str, **overrides) -> GPT2Config:
    """The ``GPT2Config`` of preset ``name`` with ``overrides`` applied (e.g. ``vocab_size`` of a tokenizer).

    An unknown name fails listing the presets and the closest one.
    """
    if name not in PRESETS:
        close = difflib.get_close_matches(name, list(PRESETS), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"Unknown GPT-2 preset {name!r}.{hint} Presets: {', '.join(PRESETS)}; or pass "
                         "--config_name / --model_name_or_path with a local config or checkpoint.")
    return GPT2Config(**{**PRESETS[name], **overrides})


def build_config(name_or_path: str, **overrides) -> PretrainedConfig:
    """A preset by name, else ``AutoConfig.from_pretrained`` (a local directory, or a cached Hub name)."""
    if is_preset(name_or_path):
        return preset_config(name_or_path, **overrides)
    try:
        return AutoConfig.from_pretrained(name_or_path, **overrides)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot load model config {name_or_path!r}: it is neither a preset "
                         f"({', '.join(PRESETS)}) nor a config that loads offline ({err}).") from err


def build_model(config_or_name: PretrainedConfig | str, seed: int | None = None, **overrides) -> PreTrainedModel:
    """A freshly initialised causal LM from a config or preset name; ``seed`` makes the init reproducible."""
    config = build_config(config_or_name, **overrides) if isinstance(config_or_name, str) else config_or_name
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def count_parameters(model: PreTrainedModel, exclude_embeddings: bool = False) -> int:
    """Parameter count with tied weights counted once (``exclude_embeddings`` drops token+position tables)."""
    return model.num_parameters(exclude_embeddings=exclude_embeddings)
