"""The model card of a run: a pretraining card for a causal LM, a task card for any other model.

transformers' automatic card calls a model built from a config "a fine-tuned version of []". A
pretraining run is described by what it was trained with and on, for how long, on what, and how well it
did: :func:`render_model_card` writes that from the run record (``run_info.json`` plus results). A model
that is not a causal LM (a classifier from ``hf-foco run run_glue.py``) gets the same record without the
language-model claims: its task, every eval metric, the class that loads it. The metadata transformers' card
takes from ``Trainer.create_model_card``'s arguments (language, license, base model, tags, tasks, datasets) is
honoured the same way, in the form the Hub checks: ``datasets`` lists Hub dataset ids only (data without one is
described in the text), and every run that was evaluated gets a ``model-index`` of its results. A run that
started from pretrained weights says so instead of "from random initialisation".
"""

from __future__ import annotations

import math

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..rundir import NATIVE_CLASS


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


# model-index's dataset when the data has no Hub id (the convention of sentence-transformers' and SetFit's cards).
UNKNOWN_DATASET = "unknown"


def _eval_metrics(res: dict, causal_lm: bool) -> dict:
    """The final evaluation's metrics; a causal LM's perplexity is exp(eval loss) when not logged."""
    metrics = dict(res.get("eval_metrics") or {})
    if causal_lm and "loss" in metrics and "perplexity" not in metrics:
        metrics["perplexity"] = math.exp(min(metrics["loss"], 700.0))
    return metrics


def _eval_results(card: dict, data: dict, metrics: dict) -> list[EvalResult]:
    """The model-index: each metric per task and dataset. Datasets are the card's Hub ids (``dataset_tags``,
    with their display names and configurations); data without one is named by its description."""
    ids = card.get("dataset_tags") or []
    names, configs = card.get("dataset") or ids, card.get("dataset_args") or []
    datasets = [(tag, names[min(i, len(names) - 1)], configs[i] if i < len(configs) else None)
                for i, tag in enumerate(ids)] or [(UNKNOWN_DATASET, data.get("name") or "Unknown", None)]
    return [EvalResult(task_type=task, dataset_type=tag, dataset_name=name, dataset_config=config,
                       metric_type=metric, metric_value=round(value, 4))
            for task in card.get("tasks") or [] for tag, name, config in datasets for metric, value in metrics.items()]


def _metadata(record: dict, card: dict, name: str, data: dict, metrics: dict, registry: bool) -> ModelCardData:
    """The YAML header: what transformers' card puts there (language, license, base_model, tags with
    ``generated_from_trainer``, datasets, a model-index of the eval results) plus the pipeline tag and hf_foco's
    tags."""
    opt, causal_lm = record["optimizer"], record.get("causal_lm", True)
    tags = ["hf-foco"] if registry else []
    if causal_lm:
        tags += ["pretraining" if not card.get("finetuned_from") else "continued-training", "causal-lm"]
    tags.append(f"optimizer-{opt['name']}")
    tags += [t for t in [*card.get("tags", []), "generated_from_trainer"] if t not in tags]
    results = _eval_results(card, data, metrics)
    return ModelCardData(library_name="transformers", pipeline_tag=(card.get("tasks") or [None])[0],
                         language=card.get("language"), license=card.get("license"),
                         base_model=card.get("base_model"), tags=tags, datasets=card.get("dataset_tags") or None,
                         metrics=list(metrics) or None, eval_results=results or None,
                         model_name=name if results else None)


def _origin(card: dict, causal_lm: bool) -> str:
    """Where the weights started: random initialisation, or the model it was trained from."""
    start = card.get("finetuned_from")
    if not start:
        return f"{'pretrained' if causal_lm else 'trained'} from random initialisation"
    link = f"[{start}](https://huggingface.co/{start})" if card.get("base_model") else f"`{start}`"
    return f"trained from the weights of {link}"


def _loading(record: dict, repo: str) -> str:
    """The snippet that loads the model (and its tokenizer or processor) back."""
    if record.get("causal_lm", True):
        model, processor = "AutoModelForCausalLM", "AutoTokenizer"
    else:
        model, processor = record.get("architecture") or "AutoModel", record.get("processor")
    imports = ", ".join(n for n in (model, processor) if n)
    lines = [f"from transformers import {imports}", "", f'model = {model}.from_pretrained("{repo}")']
    if processor:
        lines.append(f'{"tokenizer" if processor == "AutoTokenizer" else "processor"} = '
                     f'{processor}.from_pretrained("{repo}")')
    return "```python\n" + "\n".join(lines) + "\n```"


def _result_lines(res: dict, metrics: dict, causal_lm: bool) -> str:
    """The Results section's numbers: a causal LM's eval loss and perplexity, or every eval metric."""
    if causal_lm:
        loss, perplexity = metrics.get("loss"), metrics.get("perplexity")
        lines = [f"- Final eval loss: {_fmt(loss) if loss is not None else 'not evaluated'}",
                 f"- Final eval perplexity: {_fmt(perplexity) if perplexity is not None else 'not evaluated'}"]
    else:
        lines = [f"- Final eval {k.replace('_', ' ')}: {_fmt(v)}" for k, v in metrics.items()] or ["- Not evaluated"]
    final = res.get("final_train_loss")
    lines.append("- Final training loss: " + (f"{_fmt(final)} (the last logged loss, step {res.get('final_train_loss_step')})"
                                              if final is not None else "n/a"))
    if res.get("train_loss") is not None:
        lines.append(f"- Mean training loss over the run: {_fmt(res['train_loss'])}")
    return "\n".join(lines)


def render_model_card(record: dict) -> str:
    """Markdown with YAML metadata; ``record`` is ``run_info.json`` plus ``results``, ``stability`` and
    ``loss_curve`` (:func:`hf_foco.artifacts.render_run` assembles it). ``record["card"]`` holds the
    arguments of transformers' ``Trainer.create_model_card`` (:func:`hf_foco.trainer.record.card_metadata`);
    ``record["causal_lm"]`` chooses the pretraining card (the default, for records that predate the key)."""
    opt, data, res = record["optimizer"], dict(record.get("dataset") or {}), record["results"]
    card, causal_lm = record.get("card") or {}, record.get("causal_lm", True)
    repo = record.get("repo_id") or "PATH_OR_REPO_ID"
    name = card.get("model_name") or record.get("model_name") or repo.split("/")[-1]
    registry = opt.get("class") != NATIVE_CLASS
    if card.get("dataset") and "name" not in data:
        data = {"name": ", ".join(card["dataset"]), **data}
    if card.get("dataset_args"):
        data.setdefault("configuration", ", ".join(card["dataset_args"]))
    metrics = _eval_metrics(res, causal_lm)
    hyper = "\n".join(f"| `{k}` | {_fmt(v)} |" for k, v in opt["hyperparameters"].items())
    dataset_lines = "\n".join(f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in data.items()) or "- not recorded"
    stab = record.get("stability") or {}
    curve = f"![Loss curve]({record['loss_curve']})" if record.get("loss_curve") else "No loss was logged."
    params = f" with {record['num_parameters'] / 1e6:.2f} M parameters" if record.get("num_parameters") else ""
    source = (f"the **{opt['name']}** optimizer from hf_foco ({opt.get('paper') or 'see `hf-foco optimizers`'})"
              if registry else f"transformers' built-in **{opt['name']}** optimizer")
    task = (card.get("tasks") or [None])[0]
    kind = record.get("model_type")
    what = (f"A {kind or 'causal'} language model" if causal_lm else
            f"A{f' {kind}' if kind else ''} model for {task or 'its task'}")
    tokens = res.get("tokens_seen")
    unit = "sequences" if causal_lm else "examples"
    training = [f"- Optimizer: `{opt['name']}` ({opt.get('class', '')}), parameter grouping "
                f"`{opt.get('weight_decay_policy', 'stock transformers')}`",
                f"- Learning-rate schedule: {record.get('lr_scheduler_type')}, warmup {record.get('warmup_steps')} "
                f"steps, gradient clipping at {record.get('max_grad_norm')}",
                f"- Steps: {res.get('steps')}; global batch: {record.get('global_batch_size')} {unit}"]
    if causal_lm or tokens:
        training.append(f"- Tokens seen: {_fmt(tokens) if tokens else 'not recorded'}"
                        f"{' (steps x global batch x sequence length)' if res.get('tokens_seen_derived') else ''}")
    training += [f"- Precision: {record.get('precision')}", f"- Hardware: {record.get('hardware')}",
                 f"- Wall time: {_duration(res.get('train_runtime'))}"]
    limitations = (
        f"A base model from a short {'pretraining' if not card.get('finetuned_from') else 'training'} run: it "
        "continues text and was not instruction-tuned, aligned or safety-filtered. It reflects the biases and errors "
        "of its training data. Quality was measured only by held-out loss, perplexity and next-token accuracy on "
        "data like its training data; no downstream benchmark was run." if causal_lm else
        "Quality was measured only by the evaluation metrics above, on held-out data like its training data; it "
        "reflects the biases and errors of that data.")
    sections = [
        f"# {name}",
        f"{what}{params} {_origin(card, causal_lm)} with {source}.",
        "## Training",
        "\n".join(training),
        "| hyperparameter | value |\n|---|---|\n" + hyper,
        "## Data",
        dataset_lines,
        "## Results",
        f"{_result_lines(res, metrics, causal_lm)}\n"
        f"- Stability: {stab.get('num_skipped_steps', 'n/a')} skipped non-finite steps, "
        f"{len(stab.get('loss_spikes', []))} loss spikes (details in `stability.json`)",
        curve,
        "## How to load",
        _loading(record, repo),
        "## Limitations",
        limitations,
    ]
    return ModelCard(f"---\n{_metadata(record, card, name, data, metrics, registry).to_yaml()}\n---\n\n"
                     + "\n\n".join(sections) + "\n").content
