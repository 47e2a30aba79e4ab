"""Evaluation metrics for causal-LM pretraining: next-token accuracy and perplexity.

The numbers come from the evaluate module shipped at ``hf_foco/metrics/lm_metrics`` (loaded by path, so it
works with ``HF_HUB_OFFLINE=1``). To keep evaluation memory flat, full logits never leave the model's
device: :func:`preprocess_logits_for_lm_metrics` reduces them per batch to the argmax token and the
next-token negative log-likelihood.
"""

from __future__ import annotations

from pathlib import Path

import torch

METRIC_PATH = Path(__file__).resolve().parent.parent / "metrics" / "lm_metrics" / "lm_metrics.py"


def load_lm_metric():
    """The packaged evaluate module (no network)."""
    import evaluate

    return evaluate.load(str(METRIC_PATH))


def preprocess_logits_for_lm_metrics(logits: torch.Tensor, labels: torch.Tensor):
    """(argmax token, nll of the next label) per position; the last position's nll is 0 (nothing follows)."""
    if isinstance(logits, tuple):
        logits = logits[0]
    logits = logits.float()
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), targets.clamp_min(0), reduction="none")
    nll = torch.nn.functional.pad(nll.masked_fill(targets < 0, 0.0), (0, 1))
    return logits.argmax(dim=-1), nll


class LMMetrics:
    """``compute_metrics`` for the Trainer: ``eval_accuracy`` and ``eval_perplexity`` (the module's ``nll`` is
    the eval loss the Trainer logs already)."""

    def __init__(self):
        self.metric = None  # loaded at the first evaluation, so building a Trainer stays quick

    def __call__(self, eval_pred) -> dict[str, float]:
        if self.metric is None:
            self.metric = load_lm_metric()
        (predictions, nll), labels = eval_pred.predictions, eval_pred.label_ids
        result = self.metric.compute(predictions=predictions, references=labels, nll=nll)
        result.pop("tokens")
        result.pop("nll")
        return result
