"""The ``hf-foco`` command line: one subcommand per job, each defined next to the code it runs.

A subcommand is a record in ``COMMANDS``: name -> (help, function that adds its arguments, function that
runs it). Entry points that need the heavy training stack import it inside their ``run`` function, so
``hf-foco optimizers`` stays instant.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


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
    "optimizers": Command("list registered optimizers with defaults and capabilities", _optimizers_args,
                          _optimizers_run),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-foco", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.extra = extra
    return COMMANDS[args.command].run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
