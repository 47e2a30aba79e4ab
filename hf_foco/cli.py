"""The ``hf-foco`` command line: one subcommand per job, each defined next to the code it runs.

A subcommand is a record in ``COMMANDS``: name -> (help, module, its argument and run functions).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    """A subcommand: its help line and where its ``add_arguments(parser)`` and ``run(args)`` live.

    The module is imported only when its subcommand is chosen, so ``hf-foco optimizers`` never loads the
    training stack.
    """

    help: str
    module: str
    add_arguments: str
    run: str

    def resolve(self, attr: str):
        return getattr(importlib.import_module(self.module, __package__), attr)


def _optimizers_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _optimizers_run(args: argparse.Namespace) -> int:
    from .optim import list_optimizers

    rows = [
        {
            "name": spec.name,
            "class": f"{spec.cls.__module__}.{spec.cls.__qualname__}",
            "defaults": dict(spec.defaults),
            "state_bytes_per_param": spec.state_bytes_per_param,
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
        print(f"{row['name']:<8} {row['class']}  state {row['state_bytes_per_param']} B/param")
        print(f"         defaults: {defaults}")
        print(f"         capabilities: {', '.join(flags) or '-'}")
        print(f"         {row['description']}  [{row['paper']}]")
    return 0


COMMANDS: dict[str, Command] = {
    "optimizers": Command("list registered optimizers with defaults and capabilities",
                          ".cli", "_optimizers_args", "_optimizers_run"),
    "valley": Command("the synthetic narrowing valley (FOCUS paper Fig. 2): winner maps and a CSV",
                      ".valley", "valley_args", "valley_run"),
    "compare": Command("run an optimizer study (recipes x optimizers x LRs x seeds) and write its report",
                       ".compare.command", "add_arguments", "run"),
    "push": Command("upload a finished run (weights, tokenizer, card, loss curve, stability.json) to the Hub",
                    ".trainer.push", "add_arguments", "run"),
    "train": Command("pretrain GPT-2 from a recipe (same as scripts/run_pretrain.py RECIPE.yaml [--key value ...])",
                     ".pretrain", "train_args", "train_run"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = argparse.ArgumentParser(prog="hf-foco", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        sub_parser = sub.add_parser(name, help=command.help, description=command.help)
        if name == chosen:
            command.resolve(command.add_arguments)(sub_parser)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    command = COMMANDS[args.command]
    return command.resolve(command.run)(args) or 0


if __name__ == "__main__":
    sys.exit(main())
