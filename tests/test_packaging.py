"""The packaging tells the truth: every dependency floor in pyproject.toml is the version CI's floor run installs
(.ci/floors.txt, torch's from .ci/run), and transformers, whose Trainer internals FocoTrainer overrides, is
bounded below its next major version."""

import re

import pytest
from helpers import REPO
from packaging.requirements import Requirement
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml takes Python 3.11's tomllib")


def declared() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {Requirement(text).name.lower().replace("_", "-"): Requirement(text) for text in project["dependencies"]}


def test_every_floor_is_the_version_ci_tests_and_transformers_stops_before_6():
    pins = dict(line.split("==") for line in (REPO / ".ci" / "floors.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    (torch_pin,) = re.findall(r"pip install --quiet torch==([\d.]+)", (REPO / ".ci" / "run").read_text())
    tested = {name.lower().replace("_", "-"): Version(v) for name, v in {**pins, "torch": torch_pin}.items()}
    floors = {name: min(Version(s.version) for s in req.specifier if s.operator == ">=")
              for name, req in declared().items()}
    assert floors == tested
    for name, req in declared().items():
        assert req.specifier.contains(str(tested[name])), name  # the floor itself is allowed
    assert not declared()["transformers"].specifier.contains("6.0.0")
    assert declared()["transformers"].specifier.contains("5.99")
