"""Study files: a grid of training runs (recipes x optimizers x learning rates x seeds x batch sizes).

A study is a YAML file next to the recipes it uses::

    name: gpt2-nano-noise
    recipe: ../gpt2-nano/{optimizer}.yaml   # or recipes: {nano: ../gpt2-nano/adamw.yaml, ...}
    seeds: [0, 1]
    overrides: {max_steps: 600, eval_steps: 50}   # command-line keys given to every run
    optimizers:
      adamw: {learning_rates: [3.0e-4, 1.0e-3, 3.0e-3]}
      lion: {learning_rates: [1.0e-4, 3.0e-4], overrides: {weight_decay: 0.5}}
    batch_size_multipliers: [1, 4, 16]      # optional, "same token budget" (see below)
    max_grid_extensions: 2                  # optional: LRs each grid may add to bracket its optimum
    analysis: {spike_window: 16, spike_zscore: 5.0, late_fraction: 0.25}   # optional

Recipe paths are relative to the study file and may contain ``{optimizer}``: each optimizer then trains
from its own recipe (hf_foco's recipes of one model share everything but the optimizer block, and a
block cannot be removed by overrides: Signum rejects the AdamW recipe's betas). A single ``recipe`` is
named after its directory (runs ``<dir>/<optimizer>/lr<lr>-seed<seed>``, report section ``<dir>``).
``output_dir`` (default ``runs/studies/<name>``) is relative to the working directory, like a Trainer's. Every run is the recipe with, in increasing priority, the
study's ``overrides``, the optimizer's ``overrides``, the batch scaling, and its own ``optim``,
``learning_rate``, ``seed`` and ``output_dir``.

Grid extension (``max_grid_extensions``, default 0): while an optimizer's best LR in a comparison group
sits at an edge of its grid, the runner adds one more LR beyond that edge, at the grid's log spacing
(:func:`hf_foco.compare.analysis.grid_extension`), up to that many per optimizer and group. The added LRs
are not stored: they follow from the finished runs, so a resumed study or a report makes the same ones.

Borrowed learning rates (``learning_rates_from: DIR``, a study's output directory, relative to the working
directory like ``output_dir``): an optimizer without ``learning_rates`` trains at its best LR in that
study's ``summary.json``, taken from the group with the same tokens per step (e.g. a longer run of the
small-batch half of a noise study).

Same token budget: a batch multiplier ``m`` multiplies ``batch_size_key`` (default
``per_device_train_batch_size``; ``tokens_per_step`` for recipes that state their global batch) by ``m``
and divides the step-counted keys (``max_steps`` must be divisible; ``eval_steps``, ``logging_steps``,
``save_steps`` and an integer ``warmup_steps`` are divided and rounded down, at least 1), so every batch
size sees the same tokens and about as many evals.
"""

from __future__ import annotations

import itertools
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hints import did_you_mean
from ..recipe import read_recipe, read_yaml
from ..rundir import read_json
from .analysis import AnalysisConfig

# Every key of a study file -> (the YAML type its value must have, an example of it). null is "unset".
STUDY_KEYS = {
    "name": (str, "name: gpt2-nano-noise"), "recipe": (str, "recipe: ../gpt2-nano/{optimizer}.yaml"),
    "recipes": (dict, "recipes: {nano: ../gpt2-nano/adamw.yaml}"), "seeds": (list, "seeds: [0, 1]"),
    "optimizers": (dict, "optimizers: {adamw: {learning_rates: [1.0e-3]}}"),
    "overrides": (dict, "overrides: {max_steps: 600}"), "batch_size_multipliers": (list, "batch_size_multipliers: [1, 4]"),
    "batch_size_key": (str, "batch_size_key: per_device_train_batch_size"), "world_size": (int, "world_size: 1"),
    "output_dir": (str, "output_dir: runs/studies/noise"), "analysis": (dict, "analysis: {spike_window: 16}"),
    "max_grid_extensions": (int, "max_grid_extensions: 2"),
    "learning_rates_from": (str, "learning_rates_from: runs/studies/noise"),
}
# The keys of one optimizer's entry, alike.
OPTIMIZER_KEYS = {"learning_rates": (list, "learning_rates: [3.0e-4, 1.0e-3]"),
                  "overrides": (dict, "overrides: {weight_decay: 0.5}")}
_YAML_TYPES = {str: "a string", dict: "a mapping", list: "a list", int: "an integer"}
STEP_KEYS = ("max_steps", "eval_steps", "logging_steps", "save_steps", "warmup_steps", "hessian_every_n_steps")
# transformers' TrainingArguments defaults, for recipes that leave the batch keys unset.
TRAINER_DEFAULTS = {"per_device_train_batch_size": 8, "gradient_accumulation_steps": 1}
# Keys a study sets for each run itself: overriding them in a study would break the grid.
RUN_KEYS = ("optim", "learning_rate", "seed", "output_dir")


@dataclass(frozen=True)
class OptimizerGrid:
    name: str
    learning_rates: tuple[float, ...]
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunSpec:
    """One training run of a study: its place in the grid and the command-line keys that make it."""

    name: str
    group: str
    recipe: Path
    optimizer: str
    learning_rate: float
    seed: int
    batch_multiplier: int
    arguments: dict[str, Any]
    output_dir: Path
    tokens_per_step: int

    def argv(self) -> list[str]:
        """``RECIPE.yaml --key value ...`` for the pretraining job (HfArgumentParser syntax)."""
        argv = [str(self.recipe)]
        for key, value in self.arguments.items():
            argv.append(f"--{key}")
            if isinstance(value, list | tuple):
                argv.extend(str(v) for v in value)
            elif isinstance(value, dict):
                argv.append(json.dumps(value))
            else:
                argv.append(str(value).lower() if isinstance(value, bool) else str(value))
        return argv

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "group": self.group, "recipe": str(self.recipe), "optimizer": self.optimizer,
                "learning_rate": self.learning_rate, "seed": self.seed,
                "batch_multiplier": self.batch_multiplier, "tokens_per_step": self.tokens_per_step,
                "arguments": self.arguments}


def _fail(path: Path, problem: str, fix: str) -> ValueError:
    return ValueError(f"Study {path}: {problem}. {fix}")


def _check_shapes(path: Path, where: str, mapping: dict, schema: dict[str, tuple[type, str]]) -> None:
    """Refuse a key of ``mapping`` that ``schema`` does not know, or a value of another YAML type than its
    entry says (null stands for unset). A boolean is not a string, a path or a count: YAML reads an unquoted
    true/yes/no as one."""
    for key, value in mapping.items():
        if key not in schema:
            raise _fail(path, f"unknown key {key!r}{where}", f"{did_you_mean(key, schema).strip()} Known keys: "
                        f"{', '.join(schema)}.")
        kind, example = schema[key]
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            read = "a boolean (YAML reads unquoted true/false/yes/no as one)" if isinstance(value, bool) else \
                f"{_YAML_TYPES.get(type(value), type(value).__name__)} ({value!r})"
            raise _fail(path, f"{key}{where} must be {_YAML_TYPES[kind]}, not {read}", f"Write it like `{example}`.")


def _load_recipe(path: Path, study_path: Path) -> dict[str, Any]:
    try:
        return read_recipe(path)
    except FileNotFoundError:
        raise _fail(study_path, f"recipe {path} does not exist", "Recipe paths are relative to the study file.") from None
    except ValueError as err:
        raise _fail(study_path, str(err), "Use a flat HfArgumentParser YAML recipe.") from None


def _positive_floats(values: Any) -> tuple[float, ...] | None:
    """A list of positive numbers as floats (YAML 1.1 reads ``1e-3`` as a string: accept it), else None."""
    if not isinstance(values, list) or not values:
        return None
    try:
        floats = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        return None
    return floats if all(v > 0 for v in floats) else None


def _check_optimizer_name(name: str, study_path: Path) -> None:
    from transformers.training_args import OptimizerNames

    from ..optim import get_optimizer, is_registered

    if is_registered(name) or name in {o.value for o in OptimizerNames}:
        return
    try:
        get_optimizer(name)
    except KeyError as err:
        raise _fail(study_path, f"unknown optimizer {name!r}", str(err.args[0])) from None


@dataclass
class Study:
    name: str
    path: Path
    recipes: dict[str, Path]
    optimizers: tuple[OptimizerGrid, ...]
    seeds: tuple[int, ...]
    output_dir: Path
    overrides: dict[str, Any] = field(default_factory=dict)
    batch_size_multipliers: tuple[int, ...] = (1,)
    batch_size_key: str = "per_device_train_batch_size"
    world_size: int = 1
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    max_grid_extensions: int = 0
    learning_rates_from: Path | None = None

    @classmethod
    def from_yaml(cls, path: str | Path, output_dir: str | Path | None = None,
                  learning_rates_from: str | Path | None = None) -> Study:
        """Parse and check a study file; every mistake is reported before any run starts. ``output_dir`` and
        ``learning_rates_from`` override the file's."""
        path = Path(path)
        raw = read_yaml(path, "Study") if path.is_file() else None
        if not isinstance(raw, dict):
            raise _fail(path, "not found or not a YAML mapping", "Pass the path of a study YAML file.")
        _check_shapes(path, "", raw, STUDY_KEYS)
        if ("recipe" in raw) == ("recipes" in raw):
            raise _fail(path, "needs exactly one of 'recipe' (a path) or 'recipes' (name -> path)",
                        "Add e.g. `recipe: ../gpt2-nano/{optimizer}.yaml`.")
        # One recipe is named by its directory (recipes/<model>/<optimizer>.yaml -> <model>).
        recipes = raw.get("recipes") or {(path.parent / raw["recipe"]).resolve().parent.name: raw["recipe"]}
        if not all(isinstance(v, str) for v in recipes.values()):
            raise _fail(path, "'recipes' must map a short name to a recipe path", "e.g. `recipes: {nano: a.yaml}`.")
        optimizers = raw.get("optimizers")
        if not isinstance(optimizers, dict) or not optimizers:
            raise _fail(path, "'optimizers' must map optimizer names to {learning_rates: [...]}",
                        "e.g. `optimizers: {adamw: {learning_rates: [1.0e-3]}}`.")
        learning_rates_from = learning_rates_from or raw.get("learning_rates_from")
        extensions = raw.get("max_grid_extensions", 0)
        if not isinstance(extensions, int) or extensions < 0:
            raise _fail(path, f"max_grid_extensions={extensions!r} is not an integer >= 0", "e.g. `max_grid_extensions: 2`.")
        grids = []
        for name, entry in optimizers.items():
            if entry is not None and not isinstance(entry, dict):
                raise _fail(path, f"optimizer {name!r} must map to its settings, not to {type(entry).__name__} "
                            f"{entry!r}", f"Write it like `{name}: {{learning_rates: [3.0e-4, 1.0e-3]}}`.")
            entry = entry or {}
            _check_shapes(path, f" of optimizer {name!r}", entry, OPTIMIZER_KEYS)
            lrs = _positive_floats(entry.get("learning_rates"))
            if not lrs and not (learning_rates_from and "learning_rates" not in entry):
                raise _fail(path, f"optimizer {name!r} needs a non-empty list of positive learning_rates",
                            "e.g. `learning_rates: [3.0e-4, 1.0e-3]`, or `learning_rates_from: DIR`.")
            if extensions and len(lrs or ()) < 2:
                raise _fail(path, f"optimizer {name!r} has fewer than 2 learning_rates but max_grid_extensions "
                            "is set", "Give 2 or more (their ratio is the extension step) or drop the extensions.")
            _check_optimizer_name(name, path)
            grids.append(OptimizerGrid(name, lrs or (), dict(entry.get("overrides") or {})))
        overrides = dict(raw.get("overrides") or {})
        for where, mapping in [("overrides", overrides)] + [(f"{g.name}.overrides", g.overrides) for g in grids]:
            clash = [k for k in RUN_KEYS if k in mapping]
            if clash:
                raise _fail(path, f"{where} sets {clash}", "The study sets optim, learning_rate, seed and "
                            "output_dir for each run: use optimizers/learning_rates/seeds/output_dir.")
        seeds = raw.get("seeds", [0])
        multipliers = raw.get("batch_size_multipliers", [1])
        for key, values in (("seeds", seeds), ("batch_size_multipliers", multipliers)):
            if not isinstance(values, list) or not values or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in values):
                raise _fail(path, f"'{key}' must be a non-empty list of integers", f"e.g. `{key}: [1]`.")
        if any(m < 1 for m in multipliers):
            raise _fail(path, "batch_size_multipliers must be >= 1", "Use e.g. [1, 4, 16].")
        if (raw.get("world_size") or 1) < 1:
            raise _fail(path, f"world_size={raw['world_size']} is not >= 1", "Write the number of processes per run.")
        try:
            analysis = AnalysisConfig(**(raw.get("analysis") or {}))
        except (TypeError, ValueError) as err:
            raise _fail(path, f"analysis: {err}", "It takes spike_window (an integer >= 2), spike_zscore and "
                        "late_fraction (numbers).") from None
        name = raw.get("name") or path.stem
        study = cls(
            name=name, path=path,
            recipes={str(k): Path(os.path.normpath(path.parent / v)) for k, v in recipes.items()},
            optimizers=tuple(grids), seeds=tuple(seeds), overrides=overrides,
            output_dir=Path(output_dir or raw.get("output_dir") or Path("runs/studies") / name),
            batch_size_multipliers=tuple(multipliers),
            batch_size_key=raw.get("batch_size_key") or "per_device_train_batch_size",
            world_size=raw.get("world_size") or 1, analysis=analysis,
            max_grid_extensions=extensions, learning_rates_from=Path(learning_rates_from) if learning_rates_from else None,
        )
        study.runs()  # expands the grid once so recipe and batch-scaling errors surface now
        return study

    def runs(self, extensions: Mapping[tuple[str, str], Sequence[float]] | None = None) -> list[RunSpec]:
        """Every run of the grid, plus ``extensions`` ((group, optimizer) -> added LRs), in a stable order
        (recipe, optimizer, batch size, LR, seed): a partial study holds whole optimizers at every batch size."""
        extensions = extensions or {}
        runs = []
        for recipe_name, recipe_template in self.recipes.items():
            for grid, mult in itertools.product(self.optimizers, self.batch_size_multipliers):
                group = recipe_name if self.batch_size_multipliers == (1,) else f"{recipe_name}-bx{mult}"
                recipe_path = Path(str(recipe_template).replace("{optimizer}", grid.name))
                recipe = _load_recipe(recipe_path, self.path)
                arguments = {**self.overrides, **grid.overrides}
                arguments.update(self._scale_batch({**recipe, **arguments}, mult))
                merged = {**TRAINER_DEFAULTS, **recipe, **arguments}
                tokens_per_step = self._tokens_per_step(merged)
                lrs = grid.learning_rates or (self._borrowed_lr(grid.name, tokens_per_step),)
                for lr in sorted({*lrs, *extensions.get((group, grid.name), ())}):
                    for seed in self.seeds:
                        name = f"{group}/{grid.name}/lr{lr:g}-seed{seed}"
                        out = self.output_dir / "runs" / name
                        runs.append(RunSpec(
                            name=name, group=group, recipe=recipe_path, optimizer=grid.name,
                            learning_rate=lr, seed=seed, batch_multiplier=mult,
                            arguments={**arguments, "optim": grid.name, "learning_rate": lr, "seed": seed,
                                       "output_dir": str(out)},
                            output_dir=out, tokens_per_step=tokens_per_step))
        return runs

    def _borrowed_lr(self, optimizer: str, tokens_per_step: int) -> float:
        """``optimizer``'s best LR in the ``learning_rates_from`` study's group of ``tokens_per_step``."""
        source = self.learning_rates_from
        summary = read_json(source / "summary.json") if source else None
        if summary is None:
            raise _fail(self.path, f"learning_rates_from: no summary.json in {source}", "Run (or report) that "
                        "study first: hf-foco compare ITS_STUDY.yaml --output_dir DIR [--report_only].")
        groups = {g: e for g, e in summary["groups"].items() if e.get("tokens_per_step") == tokens_per_step}
        best = [e["optimizers"][optimizer]["best_learning_rate"] for e in groups.values()
                if (e["optimizers"].get(optimizer) or {}).get("best_learning_rate")]
        if len(best) != 1:
            raise _fail(self.path, f"{source / 'summary.json'} has {len(best)} best LRs for {optimizer!r} at "
                        f"{tokens_per_step} tokens per step (groups: {sorted(groups) or 'none'})", "Borrow from a "
                        "study with exactly one group at this batch size in which the optimizer has a best LR.")
        return best[0]

    def _scale_batch(self, merged: dict[str, Any], mult: int) -> dict[str, Any]:
        if mult == 1:
            return {}
        if not isinstance(merged.get("max_steps"), int) or merged["max_steps"] <= 0:
            raise _fail(self.path, "batch_size_multipliers need a positive integer max_steps",
                        "Set max_steps in the recipe or the study's overrides.")
        if merged["max_steps"] % mult:
            raise _fail(self.path, f"max_steps {merged['max_steps']} is not divisible by batch multiplier {mult}",
                        "Pick max_steps divisible by every multiplier so the token budget stays equal.")
        batch = merged.get(self.batch_size_key, TRAINER_DEFAULTS.get(self.batch_size_key))
        if not isinstance(batch, int):
            raise _fail(self.path, f"batch_size_key {self.batch_size_key!r} has no integer value to scale",
                        "Use per_device_train_batch_size, gradient_accumulation_steps or tokens_per_step.")
        scaled = {self.batch_size_key: batch * mult}
        for key in STEP_KEYS:
            if isinstance(merged.get(key), int) and not isinstance(merged[key], bool):
                scaled[key] = max(1, merged[key] // mult)
        return scaled

    def _tokens_per_step(self, merged: dict[str, Any]) -> int:
        """The recipe's ``tokens_per_step``, else batch x accumulation x block_size (the pipeline's default when
        unset) x world size."""
        from ..data import DataArguments

        if merged.get("tokens_per_step") is not None:
            return merged["tokens_per_step"]
        block = merged.get("block_size", DataArguments.block_size)
        return (merged["per_device_train_batch_size"] * merged["gradient_accumulation_steps"] * block
                * self.world_size)
