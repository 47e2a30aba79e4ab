"""Study files: a grid of training runs (recipes x optimizers x learning rates x seeds x batch sizes).

A study is a YAML file next to the recipes it uses::

    name: gpt2-nano-optimizers
    recipe: ../gpt2-nano/{optimizer}.yaml   # or recipes: {nano: ../gpt2-nano/adamw.yaml, ...}
    seeds: [0, 1]
    overrides: {max_steps: 600, eval_steps: 50}   # command-line keys given to every run
    optimizers:
      adamw: {learning_rates: [3.0e-4, 1.0e-3, 3.0e-3]}
      lion: {learning_rates: [1.0e-4, 3.0e-4], overrides: {weight_decay: 0.5}}
    batch_size_multipliers: [1, 4, 16]      # optional, "same token budget" (see below)
    analysis: {spike_window: 16, spike_zscore: 5.0, late_fraction: 0.25}   # optional

Recipe paths are relative to the study file and may contain ``{optimizer}``: each optimizer then trains
from its own recipe (hf_foco's recipes of one model share everything but the optimizer block, and a
block cannot be removed by overrides: Signum rejects the AdamW recipe's betas). A single ``recipe`` is
named after its directory (runs ``<dir>/<optimizer>/lr<lr>-seed<seed>``, report section ``<dir>``).
``output_dir`` (default ``runs/studies/<name>``) is relative to the working directory, like a Trainer's. Every run is the recipe with, in increasing priority, the
study's ``overrides``, the optimizer's ``overrides``, the batch scaling, and its own ``optim``,
``learning_rate``, ``seed`` and ``output_dir``.

Same token budget: a batch multiplier ``m`` multiplies ``batch_size_key`` (default
``per_device_train_batch_size``) by ``m`` and divides the step-counted keys (``max_steps`` must be
divisible; ``eval_steps``, ``logging_steps``, ``save_steps`` and an integer ``warmup_steps`` are divided
and rounded down, at least 1), so every batch size sees the same tokens and about as many evals.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..hints import did_you_mean
from ..recipe import read_recipe, read_yaml
from .analysis import AnalysisConfig

STUDY_KEYS = ("name", "recipe", "recipes", "seeds", "optimizers", "overrides", "batch_size_multipliers",
              "batch_size_key", "world_size", "output_dir", "analysis")
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

    @classmethod
    def from_yaml(cls, path: str | Path, output_dir: str | Path | None = None) -> Study:
        """Parse and check a study file; every mistake is reported before any run starts."""
        path = Path(path)
        raw = read_yaml(path, "Study") if path.is_file() else None
        if not isinstance(raw, dict):
            raise _fail(path, "not found or not a YAML mapping", "Pass the path of a study YAML file.")
        for key in raw:
            if key not in STUDY_KEYS:
                raise _fail(path, f"unknown key {key!r}", f"{did_you_mean(key, STUDY_KEYS).strip()} Known keys: "
                            f"{', '.join(STUDY_KEYS)}.")
        if ("recipe" in raw) == ("recipes" in raw):
            raise _fail(path, "needs exactly one of 'recipe' (a path) or 'recipes' (name -> path)",
                        "Add e.g. `recipe: ../gpt2-nano/{optimizer}.yaml`.")
        # One recipe is named by its directory (recipes/<model>/<optimizer>.yaml -> <model>).
        recipes = raw.get("recipes") or {(path.parent / raw["recipe"]).resolve().parent.name: raw["recipe"]}
        if not isinstance(recipes, dict):
            raise _fail(path, "'recipes' must map a short name to a recipe path", "e.g. `recipes: {nano: a.yaml}`.")
        optimizers = raw.get("optimizers")
        if not isinstance(optimizers, dict) or not optimizers:
            raise _fail(path, "'optimizers' must map optimizer names to {learning_rates: [...]}",
                        "e.g. `optimizers: {adamw: {learning_rates: [1.0e-3]}}`.")
        grids = []
        for name, entry in optimizers.items():
            entry = entry or {}
            lrs = _positive_floats(entry.get("learning_rates"))
            if not lrs:
                raise _fail(path, f"optimizer {name!r} needs a non-empty list of positive learning_rates",
                            "e.g. `learning_rates: [3.0e-4, 1.0e-3]`.")
            extra = set(entry) - {"learning_rates", "overrides"}
            if extra:
                raise _fail(path, f"optimizer {name!r} has unknown keys {sorted(extra)}",
                            "An optimizer takes only learning_rates and overrides.")
            _check_optimizer_name(name, path)
            grids.append(OptimizerGrid(name, lrs, dict(entry.get("overrides") or {})))
        overrides = dict(raw.get("overrides") or {})
        for where, mapping in [("overrides", overrides)] + [(f"{g.name}.overrides", g.overrides) for g in grids]:
            clash = [k for k in RUN_KEYS if k in mapping]
            if clash:
                raise _fail(path, f"{where} sets {clash}", "The study sets optim, learning_rate, seed and "
                            "output_dir for each run: use optimizers/learning_rates/seeds/output_dir.")
        seeds = raw.get("seeds", [0])
        multipliers = raw.get("batch_size_multipliers", [1])
        for key, values in (("seeds", seeds), ("batch_size_multipliers", multipliers)):
            if not isinstance(values, list) or not values or not all(isinstance(v, int) for v in values):
                raise _fail(path, f"'{key}' must be a non-empty list of integers", f"e.g. `{key}: [1]`.")
        if any(m < 1 for m in multipliers):
            raise _fail(path, "batch_size_multipliers must be >= 1", "Use e.g. [1, 4, 16].")
        name = raw.get("name") or path.stem
        study = cls(
            name=name, path=path,
            recipes={str(k): Path(os.path.normpath(path.parent / v)) for k, v in recipes.items()},
            optimizers=tuple(grids), seeds=tuple(seeds), overrides=overrides,
            output_dir=Path(output_dir or raw.get("output_dir") or Path("runs/studies") / name),
            batch_size_multipliers=tuple(multipliers),
            batch_size_key=raw.get("batch_size_key", "per_device_train_batch_size"),
            world_size=int(raw.get("world_size", 1)), analysis=AnalysisConfig(**(raw.get("analysis") or {})),
        )
        study.runs()  # expands the grid once so recipe and batch-scaling errors surface now
        return study

    def runs(self) -> list[RunSpec]:
        """Every run of the grid, in a stable order (recipe, batch size, optimizer, LR, seed)."""
        runs = []
        for recipe_name, recipe_template in self.recipes.items():
            for mult in self.batch_size_multipliers:
                group = recipe_name if self.batch_size_multipliers == (1,) else f"{recipe_name}-bx{mult}"
                for grid in self.optimizers:
                    recipe_path = Path(str(recipe_template).replace("{optimizer}", grid.name))
                    recipe = _load_recipe(recipe_path, self.path)
                    arguments = {**self.overrides, **grid.overrides}
                    arguments.update(self._scale_batch({**recipe, **arguments}, mult))
                    merged = {**TRAINER_DEFAULTS, **recipe, **arguments}
                    for lr in grid.learning_rates:
                        for seed in self.seeds:
                            name = f"{group}/{grid.name}/lr{lr:g}-seed{seed}"
                            out = self.output_dir / "runs" / name
                            runs.append(RunSpec(
                                name=name, group=group, recipe=recipe_path, optimizer=grid.name,
                                learning_rate=lr, seed=seed, batch_multiplier=mult,
                                arguments={**arguments, "optim": grid.name, "learning_rate": lr, "seed": seed,
                                           "output_dir": str(out)},
                                output_dir=out, tokens_per_step=self._tokens_per_step(merged)))
        return runs

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
                        "Use per_device_train_batch_size or gradient_accumulation_steps.")
        scaled = {self.batch_size_key: batch * mult}
        for key in STEP_KEYS:
            if isinstance(merged.get(key), int) and not isinstance(merged[key], bool):
                scaled[key] = max(1, merged[key] // mult)
        return scaled

    def _tokens_per_step(self, merged: dict[str, Any]) -> int:
        """Batch x accumulation x block_size (the pipeline's default when unset) x world size."""
        from ..data import DataArguments

        block = merged.get("block_size", DataArguments.block_size)
        return (merged["per_device_train_batch_size"] * merged["gradient_accumulation_steps"] * block
                * self.world_size)

    def check_runs(self) -> None:
        """Parse one run per (group, optimizer) with the pretraining job's own parser: a key or value the job
        rejects fails the study now, not in each of its runs."""
        from ..pretrain import parse_args

        checked = set()
        for spec in self.runs():
            if (spec.group, spec.optimizer) in checked:
                continue
            checked.add((spec.group, spec.optimizer))
            try:
                parse_args(spec.argv())
            except ValueError as err:
                raise _fail(self.path, f"run {spec.name} would fail: {err}",
                            "Fix the study's overrides or the recipe.") from None
            except SystemExit as exit_:  # argparse has printed its message
                raise _fail(self.path, f"run {spec.name} would fail: invalid command line (argparse exit "
                            f"{exit_.code}, message above)", "Fix the study's overrides or the recipe.") from None
