"""Next-token accuracy and perplexity of a causal language model, as an `evaluate` metric module.

Shipped inside hf_foco and loaded by path (``evaluate.load(<this file>)``), so evaluation works offline;
the Hub's ``accuracy``/``perplexity`` scripts are downloaded at run time. Inputs are per position, as
transformers' Trainer gathers them: ``predictions[i, t]`` is the model's argmax after reading tokens
0..t, ``references[i, t]`` the label of position t (-100: ignored). Position t predicts reference t+1.
``nll[i, t]`` (optional) is -log p(references[i, t+1] | tokens 0..t).
"""

import math

import datasets
import evaluate
import numpy as np

IGNORE_INDEX = -100


class NextTokenMetric(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description="predictions, references: int arrays (samples, positions); nll: optional floats.",
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("int64")),
                "references": datasets.Sequence(datasets.Value("int64")),
            }),
        )

    def _compute(self, predictions, references, nll=None):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        targets = references[:, 1:]
        mask = targets != IGNORE_INDEX
        count = int(mask.sum())
        if count == 0:
            raise ValueError("No labelled next-token positions: every reference is -100.")
        result = {"accuracy": float((predictions[:, :-1] == targets)[mask].mean()), "tokens": count}
        if nll is not None:
            loss = float(np.asarray(nll, dtype=np.float64)[:, :-1][mask].mean())
            result.update(nll=loss, perplexity=math.exp(loss))
        return result
