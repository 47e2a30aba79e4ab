"""Recipes: a YAML file of ``HfArgumentParser`` fields, then ``--key value`` pairs that override it.

The one reader of recipe files (the pretraining job and the study files of :mod:`hf_foco.compare` both use
it): the recipe's values become the parser's defaults, so any command-line key overrides them and argparse
still converts and checks every value. An unknown key (a typo would otherwise be silently ignored), a file
that is not a YAML mapping, or one that is not UTF-8 fails naming the file and the fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from .hints import unknown_names

RECIPE_SUFFIXES = (".yaml", ".yml")


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The mapping a recipe file holds; a missing, unreadable or non-mapping file fails naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {str(path)!r} does not exist (see recipes/ for examples).")
    try:
        recipe = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"Recipe {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}): save it as "
                         "UTF-8.") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ValueError(f"Recipe {str(path)!r} is not valid YAML{at}: {getattr(err, 'problem', err)}. Fix the "
                         "syntax (one `key: value` per line).") from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {str(path)!r} must be a mapping of argument names to values, not a "
                         f"{type(recipe).__name__}.")
    return recipe


def field_names(parser: HfArgumentParser) -> set[str]:
    return {f.name for dtype in parser.dataclass_types for f in fields(dtype) if f.init}


def load_recipe(path: str | Path, parser: HfArgumentParser) -> dict[str, Any]:
    """:func:`read_recipe`, with every key checked against the parser's fields."""
    recipe = read_recipe(path)
    known = field_names(parser)
    unknown = set(recipe) - known
    if unknown:
        raise ValueError(f"Unknown key(s) in recipe {str(path)!r}: {unknown_names(unknown, known)}. Run with --help "
                         "for the valid keys.")
    return recipe


def parse_recipe_args(parser: HfArgumentParser, argv: Sequence[str]) -> tuple:
    """``[RECIPE.yaml] [--key value ...]`` -> one instance per dataclass of ``parser``."""
    argv = list(argv)
    if argv and argv[0].endswith(RECIPE_SUFFIXES):
        parser.set_defaults(**load_recipe(argv.pop(0), parser))
        # Keys the recipe sets are no longer required on the command line (e.g. output_dir).
        for action in parser._actions:
            if action.dest in parser._defaults:
                action.required = False
    return parser.parse_args_into_dataclasses(args=argv)
