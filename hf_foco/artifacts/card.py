"""The model card of a pretraining run.

transformers' automatic card calls a model built from a config "a fine-tuned version of []". A
pretraining run is described by what it was trained with and on, for how long, on what, and how well it
did: :func:`render_model_card` writes that from the run record (``run_info.json`` plus results).
"""

from __future__ import annotations

import math

from huggingface_hub import ModelCard, ModelCardData


def _fmt(value) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_fmt(v) for v in value) + ")"
    return str(value)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "not recorded"
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours} h {rest // 60} min {rest % 60} s" if hours else f"{rest // 60} min {rest % 60} s"


def render_model_card(record: dict) -> str:
    """Markdown with YAML metadata; ``record`` is ``run_info.json`` plus ``results``, ``stability`` and
    ``loss_curve`` (:func:`hf_foco.artifacts.render_run` assembles it)."""
    opt, data, res = record["optimizer"], record.get("dataset") or {}, record["results"]
    repo = record.get("repo_id") or "PATH_OR_REPO_ID"
    name = record.get("model_name") or repo.split("/")[-1]
    tags = ["hf-foco", "pretraining", "causal-lm", f"optimizer-{opt['name']}"]
    meta = ModelCardData(library_name="transformers", pipeline_tag="text-generation", tags=tags,
                         datasets=[data["name"]] if data.get("name") else None)
    hyper = "\n".join(f"| `{k}` | {_fmt(v)} |" for k, v in opt["hyperparameters"].items())
    eval_loss = res.get("eval_loss")
    perplexity = res.get("eval_perplexity") or (math.exp(eval_loss) if eval_loss is not None else None)
    dataset_lines = "\n".join(f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in data.items()) or "- not recorded"
    stab = record.get("stability") or {}
    curve = f"![Loss curve]({record['loss_curve']})" if record.get("loss_curve") else "No loss was logged."
    params = f" with {record['num_parameters'] / 1e6:.2f} M parameters" if record.get("num_parameters") else ""
    sections = [
        f"# {name}",
        f"A {record.get('model_type') or 'causal'} language model{params} pretrained from random "
        f"initialisation with the **{opt['name']}** optimizer from "
        f"hf_foco ({opt.get('paper') or 'see `hf-foco optimizers`'}).",
        "## Training",
        f"- Optimizer: `{opt['name']}` ({opt.get('class', '')}), parameter grouping "
        f"`{opt.get('weight_decay_policy', 'stock transformers')}`\n"
        f"- Learning-rate schedule: {record.get('lr_scheduler_type')}, warmup {record.get('warmup_steps')} steps, "
        f"gradient clipping at {record.get('max_grad_norm')}\n"
        f"- Steps: {res.get('steps')}; global batch: {record.get('global_batch_size')} sequences\n"
        f"- Tokens seen: {_fmt(res.get('tokens_seen')) if res.get('tokens_seen') else 'not recorded'}\n"
        f"- Precision: {record.get('precision')}\n"
        f"- Hardware: {record.get('hardware')}\n"
        f"- Wall time: {_duration(res.get('train_runtime'))}",
        "| hyperparameter | value |\n|---|---|\n" + hyper,
        "## Data",
        dataset_lines,
        "## Results",
        f"- Final eval loss: {_fmt(eval_loss) if eval_loss is not None else 'not evaluated'}\n"
        f"- Final eval perplexity: {_fmt(perplexity) if perplexity is not None else 'not evaluated'}\n"
        f"- Final training loss: {_fmt(res['train_loss']) if res.get('train_loss') is not None else 'n/a'}\n"
        f"- Stability: {stab.get('num_skipped_steps', 'n/a')} skipped non-finite steps, "
        f"{len(stab.get('loss_spikes', []))} loss spikes (details in `stability.json`)",
        curve,
        "## How to load",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"model = AutoModelForCausalLM.from_pretrained(\"{repo}\")\n"
        f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")\n```",
        "## Limitations",
        "A base model from a short pretraining run: it continues text and was not instruction-tuned, aligned or "
        "safety-filtered. It reflects the biases and errors of its training data. Quality was measured only by "
        "held-out loss, perplexity and next-token accuracy on data like its training data; no downstream "
        "benchmark was run.",
    ]
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n").content
