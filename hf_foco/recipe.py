"""Recipes: a YAML file of ``HfArgumentParser`` fields, then ``--key value`` pairs that override it.

The one reader of recipe files (the pretraining job and the study files of :mod:`hf_foco.compare` both use
it): the recipe's values become the parser's defaults, so any command-line key overrides them and argparse
still converts and checks every value. An unknown key (a typo would otherwise be silently ignored), a file
that is not a YAML mapping, or one that is not UTF-8 fails naming the file and the fix.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml
from transformers import HfArgumentParser

from .hints import unknown_names

RECIPE_SUFFIXES = (".yaml", ".yml")
# Folders of recipes/ that hold something else (``hf-foco compare`` studies, ``accelerate`` configs).
NOT_RECIPES = ("studies", "accelerate_configs")


# The recipes installed with the package (in a checkout, a link to the repository's recipes/ folder).
PACKAGED_RECIPES = Path(__file__).resolve().parent / "recipes"


def recipes_dir() -> Path | None:
    """The recipes/ folder: the working directory's, else the one installed with hf_foco."""
    for folder in (Path("recipes"), PACKAGED_RECIPES):
        if folder.is_dir():
            return folder
    return None


def copy_recipes(destination: str | Path) -> list[Path]:
    """Copy the recipes installed with hf_foco (training recipes, studies, accelerate configs) into
    ``destination``, a folder that must not exist yet; returns the files written."""
    import shutil

    destination = Path(destination)
    if destination.exists():
        raise FileExistsError(f"{destination} already exists: pass a folder that does not, e.g. `hf-foco recipes "
                              "my-recipes`.")
    shutil.copytree(PACKAGED_RECIPES, destination, ignore=shutil.ignore_patterns("__pycache__"))
    return sorted(p for p in destination.rglob("*") if p.is_file())


def known_recipes() -> list[str]:
    """The training recipes (``recipes/<model>/<optimizer>.yaml``), as paths to pass on the command line."""
    folder = recipes_dir()
    if folder is None:
        return []
    return sorted(str(p) for p in folder.glob("*/*.yaml") if p.parent.name not in NOT_RECIPES)


def recipe_groups() -> list[str]:
    """:func:`known_recipes` by folder, for messages: ``recipes/gpt2-nano/{adamw,foco}.yaml``."""
    folders: dict[str, list[str]] = {}
    for recipe in known_recipes():
        path = Path(recipe)
        folders.setdefault(str(path.parent), []).append(path.stem)
    return [f"{folder}/{{{','.join(names)}}}.yaml" for folder, names in folders.items()]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Option defaults shown (as HfArgumentParser does) and the description kept as written."""


def describe_recipe_usage(parser: HfArgumentParser, summary: str, example: str, prog: str | None = None) -> None:
    """Make ``parser``'s ``--help`` open with the recipe: the ``RECIPE.yaml`` positional that
    :func:`parse_recipe_args` takes, the recipes there are, and ``example``, before the long option list."""
    listing = "\n".join(f"                  {group}" for group in recipe_groups())
    parser.prog = prog or parser.prog
    parser.usage = "%(prog)s RECIPE.yaml [--key value ...]"
    parser.formatter_class = _HelpFormatter
    parser.description = (
        f"{summary}\n\npositional arguments:\n"
        "  RECIPE.yaml     a YAML file of the options below (keys as the options' names, without --); any\n"
        "                  --key value after it overrides the recipe. The recipes:\n"
        f"{listing or '                  `hf-foco recipes` copies them into ./recipes'}\n\n"
        f"example:\n  {example}")


def read_yaml(path: str | Path, what: str = "Recipe") -> Any:
    """The YAML value ``path`` holds; a file that is not UTF-8 or not valid YAML fails naming it, where, and
    the fix (``what`` names the kind of file in the message)."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{what} {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}): save it as "
                         "UTF-8.") from None
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        raise ValueError(f"{what} {str(path)!r} is not valid YAML{at}: {getattr(err, 'problem', err)}. Fix the "
                         "syntax (one `key: value` per line).") from None


def read_recipe(path: str | Path) -> dict[str, Any]:
    """The mapping a recipe file holds; a missing, unreadable or non-mapping file fails naming it."""
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"Recipe {str(path)!r} is a directory: pass a recipe file in it (see recipes/ for "
                                "examples).")
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {str(path)!r} does not exist (`hf-foco recipes` copies the recipes "
                                "installed with hf_foco into ./recipes).")
    recipe = read_yaml(path)
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise ValueError(f"Recipe {str(path)!r} must be a mapping of argument names to values, not a "
                         f"{type(recipe).__name__}.")
    return recipe


def field_names(parser: HfArgumentParser) -> set[str]:
    return {f.name for dtype in parser.dataclass_types for f in fields(dtype) if f.init}


def _declared_types(parser: HfArgumentParser) -> dict[str, str]:
    """Each field's type as its dataclass declares it (``HfArgumentParser`` narrows a union such as
    ``dict | str | None`` to one argparse type), as text."""
    declared = {}
    for dtype in parser.dataclass_types:
        for klass in reversed(dtype.__mro__):
            declared.update({k: str(v) for k, v in vars(klass).get("__annotations__", {}).items()})
    return declared


def load_recipe(path: str | Path, parser: HfArgumentParser) -> dict[str, Any]:
    """:func:`read_recipe`, with every key checked against the parser's fields and every value against its
    option (:func:`_recipe_value`)."""
    recipe = read_recipe(path)
    known = field_names(parser)
    unknown = set(recipe) - known
    if unknown:
        raise ValueError(f"Unknown key(s) in recipe {str(path)!r}: {unknown_names(unknown, known)}. Run with --help "
                         "for the valid keys.")
    declared = _declared_types(parser)
    for action in parser._actions:
        if action.dest in recipe:
            recipe[action.dest] = _recipe_value(path, action, recipe[action.dest], declared.get(action.dest, ""))
    return recipe


def _recipe_value(path, action, value, declared: str):
    """A recipe's value as the option would take it from the command line (YAML skips argparse's ``type``):
    numbers checked (:func:`_number`); a mapping or a list only where the field takes one (a list option
    given one value gets a list of it); a YAML boolean or number for a text option becomes its text, as
    ``--key true`` would give."""
    if action.type in (int, float):
        return _number(path, action, value)
    many = action.nargs in ("+", "*")
    if (isinstance(value, dict) and "dict" not in declared) or (
            isinstance(value, list) and not (many or "list" in declared)):
        kind = "a mapping" if isinstance(value, dict) else "a list"
        raise ValueError(f"Recipe {str(path)!r}: {action.dest}: {kind} ({value!r}), but --{action.dest} takes one "
                         f"value; write it as on the command line, e.g. `{action.dest}: VALUE`.")
    if many and value is not None and not isinstance(value, list):
        value = [value]
    if isinstance(action.type, type) and issubclass(action.type, str):
        if isinstance(value, list):
            return [_text(v) for v in value]
        return _text(value)
    return value


def _text(value):
    """A YAML scalar as command-line text: booleans as true/false, numbers as written."""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value) if isinstance(value, int | float) else value


def _number(path, action, value):
    """A recipe's value of a numeric option, checked as the command line would (YAML skips argparse's ``type``):
    ``null`` only where the option's default is null, whole numbers for integer options."""
    wanted = "a whole number" if action.type is int else "a number"
    if value is None and action.default is None:
        return None
    if isinstance(value, str):
        try:
            value = action.type(value)
        except ValueError:
            pass
    ok = isinstance(value, int) if action.type is int else isinstance(value, (int, float))
    if not ok or isinstance(value, bool):
        raise ValueError(f"Recipe {str(path)!r}: {action.dest}: {value!r} is not {wanted}; write e.g. "
                         f"`{action.dest}: {action.default if action.default is not None else 1}`.")
    return value


def is_recipe(arg: str) -> bool:
    """Whether a command line's first argument names a recipe (a ``.yaml`` / ``.yml`` file, any case)."""
    return Path(arg).suffix.lower() in RECIPE_SUFFIXES


def parse_recipe_args(parser: HfArgumentParser, argv: Sequence[str]) -> tuple:
    """``[RECIPE.yaml] [--key value ...]`` -> one instance per dataclass of ``parser``; a first argument that
    is not an option must be the recipe. Path options are checked (:func:`check_path_options`)."""
    argv = list(argv)
    if argv and not argv[0].startswith("-"):
        if not is_recipe(argv[0]):
            raise ValueError(f"{argv[0]!r} is not a recipe: a recipe is a YAML file named *.yaml or *.yml, given "
                             "first (see recipes/ for examples); every other argument is --key value.")
        parser.set_defaults(**load_recipe(argv.pop(0), parser))
        # Keys the recipe sets are no longer required on the command line (e.g. output_dir).
        for action in parser._actions:
            if action.dest in parser._defaults:
                action.required = False
    parsed = parser.parse_args_into_dataclasses(args=argv)
    check_path_options(parsed)
    return parsed


# Options that name a file or directory: every field whose name ends so, and these.
_PATH_SUFFIXES = ("_dir", "_files", "_path", "_name_or_path")
_PATH_NAMES = ("config_name", "tokenizer_name")
_BOOLEAN_WORDS = ("true", "false", "yes", "no", "on", "off", "none", "null")


def check_path_options(parsed: Sequence[Any]) -> None:
    """Refuse a path option whose value reads as a boolean or null (``--output_dir true``, a recipe's
    ``output_dir: yes``): almost always a slip, which would otherwise create or read a directory of that name."""
    for obj in parsed:
        for field in fields(obj):
            if not (field.name.endswith(_PATH_SUFFIXES) or field.name in _PATH_NAMES):
                continue
            value = getattr(obj, field.name)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str) and item.strip().lower() in _BOOLEAN_WORDS:
                    raise ValueError(f"--{field.name} {item!r} reads as a boolean, not a path (YAML reads unquoted "
                                     f"true/yes/no as one): pass the path (./{item} if a file or directory is really "
                                     "named so), or leave the option out.")
