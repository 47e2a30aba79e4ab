"""The model card of a pretraining run.

transformers' automatic card calls a model built from a config "a fine-tuned version of []". A
pretraining run is described by what it was trained with and on, for how long, on what, and how well it
did: :func:`render_model_card` writes that from the run record (``run_info.json`` plus results). The
metadata transformers' card takes from ``Trainer.create_model_card``'s arguments (language, license,
base model, tags, tasks, datasets) is honoured the same way; a run that started from pretrained weights
says so instead of "pretrained from random initialisation".
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


def _metadata(record: dict, card: dict, name: str, data: dict, res: dict, registry: bool) -> ModelCardData:
    """The YAML header: what transformers' card puts there (language, license, base_model, tags with
    ``generated_from_trainer``, datasets, a model-index of the eval results per task and dataset) plus the
    pipeline tag and hf_foco's tags."""
    opt = record["optimizer"]
    tags = [*(["hf-foco"] if registry else []), "pretraining" if not card.get("finetuned_from") else "continued-training",
            "causal-lm", f"optimizer-{opt['name']}"]
    tags += [t for t in [*card.get("tags", []), "generated_from_trainer"] if t not in tags]
    metrics = {"loss": res.get("eval_loss"), "perplexity": res.get("eval_perplexity"),
               "accuracy": res.get("eval_accuracy")}
    metrics = {k: v for k, v in metrics.items() if v is not None}
    results = []
    if metrics and card.get("dataset_tags"):  # as transformers': a result needs a task, a dataset and metrics
        names, args = card.get("dataset") or card["dataset_tags"], card.get("dataset_args") or []
        for task in card.get("tasks") or ["text-generation"]:
            for i, tag in enumerate(card["dataset_tags"]):
                results += [EvalResult(task_type=task, dataset_type=tag, dataset_name=names[min(i, len(names) - 1)],
                                       dataset_config=args[i] if i < len(args) else None, metric_type=metric,
                                       metric_value=round(value, 4)) for metric, value in metrics.items()]
    datasets = card.get("dataset_tags") or ([data["name"]] if data.get("name") else None)
    return ModelCardData(library_name="transformers", pipeline_tag=(card.get("tasks") or ["text-generation"])[0],
                         language=card.get("language"), license=card.get("license"),
                         base_model=card.get("base_model"), tags=tags, datasets=datasets,
                         metrics=list(metrics) or None, eval_results=results or None,
                         model_name=name if results else None)


def _origin(card: dict) -> str:
    """Where the weights started: random initialisation, or the model it was trained from."""
    start = card.get("finetuned_from")
    if not start:
        return "pretrained from random initialisation"
    link = f"[{start}](https://huggingface.co/{start})" if card.get("base_model") else f"`{start}`"
    return f"trained from the weights of {link}"


def render_model_card(record: dict) -> str:
    """Markdown with YAML metadata; ``record`` is ``run_info.json`` plus ``results``, ``stability`` and
    ``loss_curve`` (:func:`hf_foco.artifacts.render_run` assembles it). ``record["card"]`` holds the
    arguments of transformers' ``Trainer.create_model_card`` (:func:`hf_foco.trainer.record.card_metadata`)."""
    opt, data, res = record["optimizer"], dict(record.get("dataset") or {}), record["results"]
    card = record.get("card") or {}
    repo = record.get("repo_id") or "PATH_OR_REPO_ID"
    name = card.get("model_name") or record.get("model_name") or repo.split("/")[-1]
    registry = opt.get("class") != NATIVE_CLASS
    if card.get("dataset") and "name" not in data:
        data = {"name": ", ".join(card["dataset"]), **data}
    if card.get("dataset_args"):
        data.setdefault("configuration", ", ".join(card["dataset_args"]))
    hyper = "\n".join(f"| `{k}` | {_fmt(v)} |" for k, v in opt["hyperparameters"].items())
    eval_loss = res.get("eval_loss")
    perplexity = res.get("eval_perplexity") or (math.exp(eval_loss) if eval_loss is not None else None)
    dataset_lines = "\n".join(f"- {k.replace('_', ' ')}: {_fmt(v)}" for k, v in data.items()) or "- not recorded"
    stab = record.get("stability") or {}
    curve = f"![Loss curve]({record['loss_curve']})" if record.get("loss_curve") else "No loss was logged."
    params = f" with {record['num_parameters'] / 1e6:.2f} M parameters" if record.get("num_parameters") else ""
    source = (f"the **{opt['name']}** optimizer from hf_foco ({opt.get('paper') or 'see `hf-foco optimizers`'})"
              if registry else f"transformers' built-in **{opt['name']}** optimizer")
    final = res.get("final_train_loss")
    final_line = (f"{_fmt(final)} (the last logged loss, step {res.get('final_train_loss_step')})"
                  if final is not None else "n/a")
    mean_line = (f"\n- Mean training loss over the run: {_fmt(res['train_loss'])}"
                 if res.get("train_loss") is not None else "")
    sections = [
        f"# {name}",
        f"A {record.get('model_type') or 'causal'} language model{params} {_origin(card)} with {source}.",
        "## Training",
        f"- Optimizer: `{opt['name']}` ({opt.get('class', '')}), parameter grouping "
        f"`{opt.get('weight_decay_policy', 'stock transformers')}`\n"
        f"- Learning-rate schedule: {record.get('lr_scheduler_type')}, warmup {record.get('warmup_steps')} steps, "
        f"gradient clipping at {record.get('max_grad_norm')}\n"
        f"- Steps: {res.get('steps')}; global batch: {record.get('global_batch_size')} sequences\n"
        f"- Tokens seen: {_fmt(res.get('tokens_seen')) if res.get('tokens_seen') else 'not recorded'}"
        f"{' (steps x global batch x sequence length)' if res.get('tokens_seen_derived') else ''}\n"
        f"- Precision: {record.get('precision')}\n"
        f"- Hardware: {record.get('hardware')}\n"
        f"- Wall time: {_duration(res.get('train_runtime'))}",
        "| hyperparameter | value |\n|---|---|\n" + hyper,
        "## Data",
        dataset_lines,
        "## Results",
        f"- Final eval loss: {_fmt(eval_loss) if eval_loss is not None else 'not evaluated'}\n"
        f"- Final eval perplexity: {_fmt(perplexity) if perplexity is not None else 'not evaluated'}\n"
        f"- Final training loss: {final_line}{mean_line}\n"
        f"- Stability: {stab.get('num_skipped_steps', 'n/a')} skipped non-finite steps, "
        f"{len(stab.get('loss_spikes', []))} loss spikes (details in `stability.json`)",
        curve,
        "## How to load",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f"model = AutoModelForCausalLM.from_pretrained(\"{repo}\")\n"
        f"tokenizer = AutoTokenizer.from_pretrained(\"{repo}\")\n```",
        "## Limitations",
        f"A base model from a short {'pretraining' if not card.get('finetuned_from') else 'training'} run: it "
        "continues text and was not instruction-tuned, aligned or "
        "safety-filtered. It reflects the biases and errors of its training data. Quality was measured only by "
        "held-out loss, perplexity and next-token accuracy on data like its training data; no downstream "
        "benchmark was run.",
    ]
    return ModelCard(f"---\n{_metadata(record, card, name, data, res, registry).to_yaml()}\n---\n\n"
                     + "\n\n".join(sections) + "\n").content
