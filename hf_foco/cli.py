"""The ``hf-foco`` command line: each subcommand declares its options and hands them to the package function
that does the work (``train``: :func:`hf_foco.pretrain.main`, ``compare``: :func:`hf_foco.compare.command.compare`,
``valley``: :func:`hf_foco.valley.run_valley`, ``push``: :func:`hf_foco.artifacts.push.push_run`).

Each subcommand imports what it needs only when it is chosen, so ``hf-foco optimizers`` never loads the
training stack. Options are spelled as transformers spells its own (``--output_dir``, ``--repo_id``); the
dashed spellings of earlier releases (:data:`RENAMED`) still work, with a note on stderr, until the next
release. ``python -m hf_foco.cli train ...`` is how studies launch their runs.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line, how it declares its arguments, and what runs it (returns the exit code).

    Without ``add_arguments`` the subcommand takes the rest of the command line as it is (``train`` hands it
    to the pretraining job's own parser); ``run`` then receives the list of strings.
    """

    help: str
    run: Callable
    add_arguments: Callable[[argparse.ArgumentParser], None] | None = None

    def __call__(self, name: str, argv: list[str]) -> int:
        if self.add_arguments is None:
            return self.run(argv)
        parser = argparse.ArgumentParser(prog=f"hf-foco {name}", description=self.help)
        self.add_arguments(parser)
        return self.run(parser.parse_args(_respell(name, argv)))


# Options renamed to transformers' --snake_case spelling: the old spelling is accepted, with a note, for one
# more release.
RENAMED = {"--repo-id": "--repo_id", "--dataset-info": "--dataset_info", "--out-dir": "--output_dir",
           "--n-sigma": "--n_sigma", "--n-a": "--n_a", "--n-omega": "--n_omega", "--n-lr": "--n_lr",
           "--spot-check": "--spot_check"}


def _respell(command: str, argv: list[str]) -> list[str]:
    """``argv`` with each old option spelling (``--out-dir`` or ``--out-dir=DIR``) replaced by the new one."""
    respelled = []
    for arg in argv:
        flag, sep, value = arg.partition("=")
        if flag in RENAMED:
            print(f"hf-foco {command}: {flag} is now spelled {RENAMED[flag]}; the old spelling goes in the next "
                  "release.", file=sys.stderr)
            arg = RENAMED[flag] + sep + value
        respelled.append(arg)
    return respelled


# -- hf-foco optimizers ------------------------------------------------------------------------------------

def _optimizers_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _state_size(spec) -> str:
    return spec.state if spec.state_bytes_per_param is None else f"{spec.state_bytes_per_param:g} B/param"


def _optimizers(args: argparse.Namespace) -> int:
    from .optim import list_optimizers

    rows = [
        {
            "name": spec.name,
            "class": f"{spec.cls.__module__}.{spec.cls.__qualname__}",
            "defaults": dict(spec.defaults),
            "defaults_from": spec.defaults_from,
            "state_bytes_per_param": spec.state_bytes_per_param,
            "state": _state_size(spec),
            "needs_half_batch_grads": spec.needs_half_batch_grads,
            "needs_layer_hooks": spec.needs_layer_hooks,
            "supports_sharded_params": spec.supports_sharded_params,
            "paper": spec.paper,
            "description": spec.description,
        }
        for spec in list_optimizers()
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        flags = [f for f in ("needs_half_batch_grads", "needs_layer_hooks", "supports_sharded_params") if row[f]]
        defaults = ", ".join(f"{k}={v}" for k, v in row["defaults"].items())
        print(f"{row['name']:<8} {row['class']}  state: {row['state']}")
        print(f"         defaults: {defaults}  ({row['defaults_from']})")
        print(f"         capabilities: {', '.join(flags) or '-'}")
        print(f"         {row['description']}  [{row['paper']}]")
    print("\nEach name works as --optim NAME with FocoTrainingArguments, scripts/run_pretrain.py, and any stock "
          "Trainer script run as `hf-foco run SCRIPT.py --optim NAME ...`.")
    return 0


# -- hf-foco build-kernels --------------------------------------------------------------------------------

def _build_kernels(args: argparse.Namespace) -> int:
    from .optim import cpu_kernels

    module = cpu_kernels.build()
    if isinstance(module, str):
        print(f"hf-foco build-kernels: no fused CPU kernels ({module}); the optimizers take their foreach steps.",
              file=sys.stderr)
        return 1
    print(f"hf_foco's fused CPU optimizer kernels are ready: {module.__file__}")
    return 0


# -- hf-foco train -----------------------------------------------------------------------------------------

def _train(argv: list[str]) -> int:
    """``RECIPE.yaml [--key value ...]`` for the pretraining job; without a recipe, an error listing them."""
    from .pretrain import main, parse_args
    from .recipe import recipe_groups

    if argv[:1] in (["-h"], ["--help"]):
        parse_args(argv, prog="hf-foco train")  # prints the help and exits
    if argv and not argv[0].startswith("-"):
        return main(argv)
    recipes = recipe_groups()
    listing = (f" Recipes: {', '.join(recipes)}." if recipes else
               " The hf_foco repository's recipes/ folder holds examples.")
    raise SystemExit(f"hf-foco train: error: name a recipe first, e.g. `hf-foco train recipes/gpt2-nano/foco.yaml "
                     f"[--key value ...]`.{listing}")


# -- hf-foco prepare-data ----------------------------------------------------------------------------------

def _prepare_data(argv: list[str]) -> int:
    """``--prepared_data DIR`` plus the data keys of a recipe: token shards for ``train --prepared_data DIR``."""
    from transformers import HfArgumentParser

    from .data import DataArguments, PrepareArguments, prepare_token_shards

    parser = HfArgumentParser((DataArguments, PrepareArguments), prog="hf-foco prepare-data",
                              description=COMMANDS["prepare-data"].help)
    try:
        data_args, prepare_args = parser.parse_args_into_dataclasses(argv)
        index, reused = prepare_token_shards(data_args, prepare_args)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"hf-foco prepare-data: error: {err}") from err
    splits = ", ".join(f"{split} {s['tokens']:,} tokens in {len(s['shards'])} shard(s)"
                       for split, s in index["splits"].items())
    print(f"{data_args.prepared_data}: {'already prepared, checked' if reused else 'prepared'}: {splits} "
          f"({index['dtype']}, {index['tokenizer']['name']}). Train on it with --prepared_data {data_args.prepared_data}.")
    return 0


# -- hf-foco recipes ---------------------------------------------------------------------------------------

def _recipes_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("destination", nargs="?", default="recipes",
                        help="folder to create with the recipes (default: ./recipes, where the README's commands "
                             "look for them)")


def _recipes(args: argparse.Namespace) -> int:
    from .recipe import copy_recipes

    try:
        copied = copy_recipes(args.destination)
    except FileExistsError as err:
        print(f"hf-foco recipes: error: {err}", file=sys.stderr)
        return 1
    print(f"Copied {len(copied)} files into {args.destination}: e.g. `hf-foco train "
          f"{Path(args.destination) / 'gpt2-nano' / 'foco.yaml'}`.")
    return 0


# -- hf-foco run -------------------------------------------------------------------------------------------

def _run(argv: list[str]) -> int:
    """``SCRIPT.py [args...]``: an unmodified Trainer script with hf_foco's optimizers (:mod:`hf_foco.run`)."""
    from .run import main

    return main(argv)


# -- hf-foco push ------------------------------------------------------------------------------------------

def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{text!r} is not a JSON object: write it like '{{\"name\": \"wikitext\"}}'")
    return value


def _push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="output directory of a finished run")
    parser.add_argument("--repo_id", required=True, help="Hub repository, USER/NAME")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", default=None, help="branch to push to")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    parser.add_argument("--dataset_info", type=_json_object, default=None,
                        help="JSON dict describing the training data, shown in the card")


def _push(args: argparse.Namespace) -> int:
    from .artifacts.push import PushError, push_run

    try:
        commit = push_run(args.output_dir, args.repo_id, token=args.token, private=args.private or None,
                          revision=args.revision, dataset_info=args.dataset_info)
    except (PushError, FileNotFoundError) as err:
        print(f"hf-foco push: error: {err}", file=sys.stderr)
        return 1
    print(f"Pushed {args.output_dir} to {getattr(commit, 'commit_url', args.repo_id)}")
    return 0


# -- hf-foco compare ---------------------------------------------------------------------------------------

def _compare_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="study YAML file (see hf_foco/compare/study.py for the format)")
    parser.add_argument("--output_dir", help="where runs and the report go (default: the study's output_dir, "
                        "else runs/studies/<name>)")
    parser.add_argument("--launcher", help="command that trains one run from `RECIPE --key value ...` "
                        "(default: python -m hf_foco.cli train; e.g. 'accelerate launch -m hf_foco.cli train')")
    parser.add_argument("--learning_rates_from", help="output directory of a finished (or reported) study whose "
                        "best LRs the optimizers without learning_rates take (overrides the study file's)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (default 1)")
    parser.add_argument("--threads_per_run", type=int, help="OpenMP/MKL threads per run (default: the CPU count "
                        "divided by --jobs; with one job, the environment's setting)")
    parser.add_argument("--retry_failed", action="store_true", help="rerun failed runs (finished runs are "
                        "always skipped)")
    parser.add_argument("--report_only", action="store_true", help="write the report from the runs done so far "
                        "(also while the study is running, or after it was interrupted)")
    parser.add_argument("--dry_run", action="store_true", help="print each run's command and status; run nothing")


def _compare(args: argparse.Namespace) -> int:
    from .compare.command import StudyFailed, compare

    try:
        compare(args.study, args.output_dir, shlex.split(args.launcher) if args.launcher else None,
                args.learning_rates_from, jobs=args.jobs, threads_per_run=args.threads_per_run,
                retry_failed=args.retry_failed, report_only=args.report_only, dry_run=args.dry_run)
    except ValueError as err:
        print(f"hf-foco compare: {err}", file=sys.stderr)
        return 2
    except StudyFailed as err:
        print(f"hf-foco compare: error: {err}", file=sys.stderr)
        return 1
    return 0


# -- hf-foco valley ----------------------------------------------------------------------------------------

def _valley_arguments(parser: argparse.ArgumentParser) -> None:
    import os

    from .valley import GRIDS, SPOT_OPTIMIZERS, TOY_OPTIMIZERS

    parser.add_argument("--preset", choices=sorted(GRIDS), default="default",
                        help="grid resolution. spec: the paper's 100 sigma x 96 (a or omega) x 20 lr x "
                             "50 replicates x 1000 steps (4x the default's work). default: 61 sigma "
                             "(step 0.05) x 49 a (12 per decade) / 51 omega (step 0.01) x the spec's 20 "
                             "lr x 40 replicates x 1000 steps: 3 optimizers and both panels take ~7 "
                             "CPU-minutes. quick: a smoke test. The --n_* flags override single axes.")
    for flag, help_ in (("--n_sigma", "sigma points in [0, 3]"), ("--n_a", "sharpness points in [0.1, 1000]"),
                        ("--n_omega", "weight-decay points in [0, 0.5]"),
                        ("--n_lr", "lr points in [1e-3, 1]"), ("--replicates", "replicates per cell"),
                        ("--steps", "steps per run")):
        parser.add_argument(flag, type=int, default=None, help=help_ + " (overrides --preset)")
    parser.add_argument("--panels", nargs="+", choices=("a", "omega"), default=["a", "omega"],
                        help="a: Fig. 2a, winner per (sigma, a) at omega = 0.1; omega: Fig. 2b, winner per "
                             "(sigma, omega) at a = 10")
    parser.add_argument("--optimizers", nargs="+", choices=sorted(TOY_OPTIMIZERS),
                        default=list(SPOT_OPTIMIZERS), help="toy optimizers to compare (see hf_foco.valley.toys; "
                        "focus-toy is the spec's toy FOCUS, focus the package's)")
    parser.add_argument("--output_dir", type=Path, default=Path("valley_out"), help="where the CSV and PNGs go")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=os.cpu_count(),
                        help="single-threaded worker processes (default: one per CPU core)")
    parser.add_argument("--spot_check", action="store_true",
                        help="only run the spec's table cells (with the chosen lr/replicates/steps) and "
                             "print them beside the spec's values")


def _valley(args: argparse.Namespace) -> int:
    from .valley import run_valley

    try:
        run_valley(args.output_dir, preset=args.preset, n_sigma=args.n_sigma, n_a=args.n_a, n_omega=args.n_omega,
                   n_lr=args.n_lr, replicates=args.replicates, steps=args.steps, panels=args.panels,
                   optimizers=args.optimizers, seed=args.seed, workers=args.workers, spot_check=args.spot_check)
    except ValueError as err:
        raise SystemExit(f"hf-foco valley: error: {err}") from None
    return 0


COMMANDS: dict[str, Command] = {
    "optimizers": Command("list registered optimizers with defaults and capabilities", _optimizers,
                          _optimizers_arguments),
    "build-kernels": Command("compile the fused CPU optimizer kernels now (once per machine, about a minute) "
                             "instead of at the first optimizer step", _build_kernels, lambda parser: None),
    "train": Command("pretrain GPT-2 from a recipe: hf-foco train RECIPE.yaml [--key value ...] (as "
                     "scripts/run_pretrain.py)", _train),
    "prepare-data": Command("tokenize a dataset once into token shards that training reads with --prepared_data "
                            "DIR: hf-foco prepare-data --prepared_data DIR [--dataset_name ... | --train_files ...]",
                            _prepare_data),
    "recipes": Command("copy the recipes, studies and accelerate configs installed with hf_foco into a folder",
                       _recipes, _recipes_arguments),
    "run": Command("run an unmodified Trainer script with every hf_foco optimizer on its --optim: hf-foco run "
                   "SCRIPT.py [args ...]", _run),
    "compare": Command("run an optimizer study (recipes x optimizers x LRs x seeds) and write its report",
                       _compare, _compare_arguments),
    "valley": Command("the synthetic narrowing valley (FOCUS paper Fig. 2): winner maps and a CSV", _valley,
                      _valley_arguments),
    "push": Command("upload a finished run (weights, tokenizer, card, loss curve, stability.json) to the Hub",
                    _push, _push_arguments),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    commands = "\n".join(f"  {name:<13} {command.help}" for name, command in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="hf-foco", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="FOCUS, foco, FOP and sign-based optimizers for GPT-style pretraining with Hugging Face tools.",
        epilog=f"commands:\n{commands}\n\n`hf-foco COMMAND --help` shows a command's options.")
    parser.add_argument("command", choices=COMMANDS, metavar="COMMAND", help="one of the commands below")
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.parse_args(argv[:1])  # prints the help, or the error naming the choices
    return COMMANDS[argv[0]](argv[0], argv[1:]) or 0


if __name__ == "__main__":
    sys.exit(main())
