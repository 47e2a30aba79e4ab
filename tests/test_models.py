"""The model a run builds for its tokenizer: a vocabulary padded to a multiple, whose extra ids generation never
emits, before and after a save and reload."""

import pytest
import torch
from helpers import tiny_tokenizer
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from hf_foco.models import ModelArguments, fit_to_tokenizer, model_config, suppress_padded_ids


class _Sized:
    """Stands in for a tokenizer of ``n`` tokens."""

    def __init__(self, n):
        self.n, self.eos_token_id, self.pad_token_id = n, 0, 0

    def __len__(self):
        return self.n


@pytest.mark.parametrize("tokens, multiple, rows", [(50257, 64, 50304), (50304, 64, 50304), (4096, 64, 4096),
                                                     (23, 64, 64), (300, 1, 300), (301, None, 301), (301, 8, 304)])
def test_the_vocabulary_is_rounded_up_to_the_multiple(tokens, multiple, rows):
    config = GPT2Config()
    fit_to_tokenizer(config, _Sized(tokens), multiple)
    assert config.vocab_size == rows and config.eos_token_id == config.bos_token_id == 0


def test_a_multiple_below_one_is_refused():
    with pytest.raises(ValueError, match=r"--pad_vocab_size_to_multiple_of 0: it must be >= 1 \(or leave it unset\)"):
        model_config(ModelArguments(pad_vocab_size_to_multiple_of=0), block_size=16)


def _model_preferring_padded_ids(tokenizer):
    """A tiny GPT-2 with 64 rows for the tokenizer's 20 tokens whose padded rows win every argmax: the final
    LayerNorm outputs the constant vector b, and each padded row is 10 b (its logit 10 |b|^2, the others ~0)."""
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    fit_to_tokenizer(config, tokenizer, 64)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config).eval()
    b = torch.ones(16)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(b)
        model.transformer.wte.weight[len(tokenizer):] = 10 * b
    return model


def test_generation_never_emits_a_padded_id_also_after_reloading(tmp_path):
    tokenizer = tiny_tokenizer()
    model = _model_preferring_padded_ids(tokenizer)
    prompt = tokenizer("the cat sat", return_tensors="pt")["input_ids"]
    assert model.config.vocab_size == 64 > len(tokenizer)
    unsuppressed = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert (unsuppressed[0, prompt.shape[1]:] >= len(tokenizer)).all()  # the rows exist and would win
    suppress_padded_ids(model, tokenizer)
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)  # as the model card's snippet loads it
    for candidate in (model, reloaded):
        for sample in (False, True):
            torch.manual_seed(0)
            out = candidate.generate(prompt, max_new_tokens=16, do_sample=sample, pad_token_id=0)
            assert out.shape[1] == prompt.shape[1] + 16
            assert (out < len(tokenizer)).all(), (candidate is model, sample)
    assert tokenizer.decode(out[0])  # every generated id decodes


def test_an_unpadded_vocabulary_suppresses_nothing():
    tokenizer = tiny_tokenizer()
    config = GPT2Config(n_layer=1, n_embd=16, n_head=2, n_positions=32)
    fit_to_tokenizer(config, tokenizer)
    model = GPT2LMHeadModel(config)
    suppress_padded_ids(model, tokenizer)
    assert config.vocab_size == len(tokenizer) and not model.generation_config.suppress_tokens
