"""Shared helpers of the K-FAC / FOP tests: a stand-in for the Trainer and tiny models."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel


class StubTrainer:
    """The attributes of ``transformers.Trainer`` that ``training_step`` of FOP/K-FAC reads."""

    def __init__(self, accumulation: int = 1):
        self.args = SimpleNamespace(n_gpu=0, gradient_accumulation_steps=accumulation)
        self.current_gradient_accumulation_steps = accumulation
        self.model_accepts_loss_kwargs = False
        self.compute_loss_func = None
        self.loss_is_scaled_for_ga = None
        self.accelerator = SimpleNamespace(backward=lambda loss: loss.backward())

    def _prepare_inputs(self, inputs):
        return inputs

    def compute_loss_context_manager(self):
        return contextlib.nullcontext()

    def compute_loss(self, model, inputs, num_items_in_batch=None):
        return model(**inputs).loss


def tiny_gpt2(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(**{**dict(n_layer=1, n_embd=16, n_head=2, n_positions=16, vocab_size=32, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0), **overrides})
    return GPT2LMHeadModel(config)


class Classifier(nn.Module):
    """x -> layer1 -> tanh -> layer2 -> logits; ``make_layer(in, out)`` picks Linear or Conv1D."""

    def __init__(self, make_layer, sizes=(5, 7, 4)):
        super().__init__()
        self.layer1 = make_layer(sizes[0], sizes[1])
        self.layer2 = make_layer(sizes[1], sizes[2])

    def forward(self, x, labels=None):
        logits = self.layer2(torch.tanh(self.layer1(x)))
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return SimpleNamespace(logits=logits, loss=loss)
