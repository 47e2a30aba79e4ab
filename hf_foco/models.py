"""Which model to pretrain: ``ModelArguments``, GPT-2 presets, and the checked config a run builds.

A preset name picks a size, from CPU-minutes smoke runs to the paper's 124M/350M models. Presets are plain
``GPT2Config`` keyword dicts so that benchmarks, recipes and tests build the very same models from a name,
offline (no ``from_pretrained`` download). Dropout is off in every preset, as in nanoGPT's pretraining runs:
with a single pass over the data it only slows learning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .hints import did_you_mean, parse_key_values, unknown_names

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


@dataclass
class ModelArguments:
    """Which model to pretrain."""

    model: str = field(default="gpt2-nano", metadata={
        "help": f"A GPT-2 preset: {', '.join(PRESETS)}. Ignored when --config_name or --model_name_or_path is set."})
    config_name: str | None = field(default=None, metadata={
        "help": "A config (local directory, or a Hub name in the local cache) to initialise a fresh model from."})
    model_name_or_path: str | None = field(default=None, metadata={
        "help": "A checkpoint to continue pretraining from (offline: a local directory or cached name)."})
    config_overrides: str | None = field(default=None, metadata={
        "help": "Config fields to override, e.g. 'n_layer=2,n_embd=64' (fresh models only)."})
    pad_vocab_size_to_multiple_of: int | None = field(default=None, metadata={
        "help": "Round the embedding's rows up to a multiple of this (64: aligned GPU matrix multiplies for "
                "GPT-2's 50257 tokens) when the vocabulary size comes from the tokenizer (fresh models only). The "
                "tokenizer is unchanged; the extra ids never occur in the data and generation never emits them. "
                "Unset: no padding."})



def fit_to_tokenizer(config: PretrainedConfig, tokenizer: PreTrainedTokenizerBase, multiple: int | None = None) -> None:
    """Size ``config``'s vocabulary for ``tokenizer`` (rounded up to a multiple of ``multiple``, if given) and
    take its special ids."""
    multiple = multiple or 1
    config.vocab_size = -(-len(tokenizer) // multiple) * multiple
    config.bos_token_id = config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id


def suppress_padded_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Make ``generate`` never emit the ids past the tokenizer's (rows a padded embedding has, which no text
    decodes to): they are suppressed in the model's generation config, saved with it as
    ``generation_config.json``, so a model loaded with ``from_pretrained`` keeps the rule."""
    padded = list(range(len(tokenizer), model.config.vocab_size))
    if padded:
        model.generation_config.suppress_tokens = padded


def is_preset(name: str | None) -> bool:
    return name in PRESETS


def preset_config(name: str, **overrides) -> GPT2Config:
    """The ``GPT2Config`` of preset ``name`` with ``overrides`` applied (e.g. ``vocab_size`` of a tokenizer).

    An unknown name fails listing the presets and the closest one.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown GPT-2 preset {name!r}.{did_you_mean(name, PRESETS)} Presets: {', '.join(PRESETS)}; "
                         "or pass --config_name / --model_name_or_path with a local config or checkpoint.")
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


def _parse_overrides(text: str | None) -> dict[str, Any]:
    """``--config_overrides "n_layer=2,n_embd=64"`` with each value read as YAML (numbers, booleans, null)."""
    pairs = parse_key_values(text, "--config_overrides", "n_layer=2,n_embd=64")
    return {key: yaml.safe_load(value) for key, value in pairs.items()}


# Size settings of the usual configs: a value below 1 builds a model that cannot train (or trains nothing).
_SIZES = ("n_layer", "n_head", "n_embd", "n_positions", "vocab_size", "num_hidden_layers", "num_attention_heads",
          "hidden_size", "intermediate_size", "max_position_embeddings")


def positions(config: PretrainedConfig) -> int | None:
    """The longest sequence the model's position embedding serves, if it has one."""
    return getattr(config, "n_positions", None) or getattr(config, "max_position_embeddings", None)


def model_config(model_args: ModelArguments, block_size: int) -> PretrainedConfig:
    """The config to build, checked before any data is touched: override keys the config does not have (a
    typo would be silently stored and ignored) and a block size beyond the model's positions fail here."""
    overrides = _parse_overrides(model_args.config_overrides)
    if (multiple := model_args.pad_vocab_size_to_multiple_of) is not None and multiple < 1:
        raise ValueError(f"--pad_vocab_size_to_multiple_of {multiple}: it must be >= 1 (or leave it unset).")
    if model_args.model_name_or_path and overrides:
        raise ValueError("--config_overrides applies to fresh models only, not to --model_name_or_path.")
    name = model_args.model_name_or_path or model_args.config_name
    config = build_config(name) if name else preset_config(model_args.model)
    known = config.to_dict()
    unknown = set(overrides) - set(known)
    if unknown:
        raise ValueError(f"--config_overrides: {config.model_type} configs have no {unknown_names(unknown, known)}; "
                         f"fix the key(s) (e.g. n_layer, n_embd, n_head, n_positions).")
    for key, value in overrides.items():
        if key in _SIZES and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            raise ValueError(f"--config_overrides {key}={value!r}: {key} must be a whole number >= 1.")
        try:
            setattr(config, key, value)
        except StrictDataclassError as err:  # transformers' typed config fields (e.g. n_layer=x)
            raise ValueError(f"--config_overrides {key}={value!r}: {str(err).splitlines()[-1].strip()}.") from None
    if positions(config) is not None and block_size > positions(config):
        raise ValueError(f"--block_size {block_size} exceeds the model's {positions(config)} positions: lower "
                         f"--block_size or raise them (e.g. --config_overrides n_positions={block_size}).")
    return config


def refuse_tokenizer_overrides(model_args: ModelArguments, tokenizer) -> None:
    """``--config_overrides`` of a field the job sets from the tokenizer (the vocabulary size, the special
    ids) would be silently replaced: refuse any value other than the tokenizer's, naming the fix."""
    overrides = _parse_overrides(model_args.config_overrides)
    own = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.eos_token_id,
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    clash = {key: value for key, value in overrides.items() if key in own and value != own[key]}
    if clash:
        given = ",".join(f"{k}={v}" for k, v in clash.items())
        raise ValueError(f"--config_overrides {given}: a fresh model takes its vocabulary size and special token ids "
                         f"from the tokenizer ({', '.join(f'{k}={own[k]}' for k in clash)}). Drop them from "
                         "--config_overrides; for another vocabulary size, train the tokenizer with "
                         "--tokenizer_vocab_size N, or pass one with --tokenizer_name.")
