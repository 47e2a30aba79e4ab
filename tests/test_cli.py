"""The command line as people expect it: plain-text help, the recipe first in run_pretrain's help, a missing
recipe named as the error it is, `hf-foco optimizers` in words, and `hf-foco build-kernels`."""

import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, SCRIPT

from hf_foco import cli
from hf_foco.optim import cpu_kernels

RST = re.compile(r"``|:(class|func|meth|mod|attr|data):`")


@pytest.mark.parametrize("argv", [[], *([name] for name in cli.COMMANDS)], ids=lambda a: " ".join(a) or "hf-foco")
def test_help_is_plain_text_without_restructuredtext(argv, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    try:
        code = cli.main([*argv, "--help"])
    except SystemExit as exit_:
        code = exit_.code
    assert code in (0, None)
    text = capsys.readouterr().out
    assert text.startswith("usage: hf-foco") and not RST.search(text), RST.search(text)


def test_run_pretrain_help_opens_with_the_recipe_and_an_example(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setattr(sys, "argv", [str(SCRIPT), "--help"])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_path(str(SCRIPT), run_name="__main__")
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: run_pretrain.py RECIPE.yaml [--key value ...]\n")
    places = [text.index(s) for s in ("  RECIPE.yaml ", "recipes/gpt2-nano/{adamw,foco,focus,fop,kfac,lion,muon,signum}.yaml",
                                      "example:\n  accelerate launch", "\noptions:\n", "--learning_rate")]
    assert places == sorted(places)


def test_train_without_a_recipe_is_an_error_listing_the_recipes(monkeypatch):
    monkeypatch.chdir(REPO)
    for argv in (["train"], ["train", "--max_steps", "10"]):
        with pytest.raises(SystemExit, match=r"hf-foco train: error: name a recipe first, e\.g\. `hf-foco train "
                                             r"recipes/gpt2-nano/foco\.yaml .*Recipes: recipes/gpt2-nano/\{adamw,"):
            cli.main(argv)
    assert not (REPO / "trainer_output").exists()


def test_optimizers_says_kronecker_factors_for_the_second_order_ones(capsys):
    assert cli.main(["optimizers"]) == 0
    text = capsys.readouterr().out
    assert "None B/param" not in text
    for name in ("kfac", "fop"):
        (line,) = [row for row in text.splitlines() if row.startswith(f"{name} ")]
        assert line.endswith("state: Kronecker factors (per layer, not per parameter)")
    assert re.search(r"^foco .*state: 4 B/param$", text, flags=re.M)
    assert "`hf-foco run SCRIPT.py --optim NAME ...`" in text  # where a stock script's closed --optim list ends


def test_the_old_dashed_option_spellings_still_work_with_a_note(tmp_path, capsys):
    """``--repo-id``, ``--out-dir``, ``--n-sigma``, ... are ``--repo_id``, ``--output_dir``, ``--n_sigma`` now;
    the old spelling (also as ``--flag=value``) reaches the same option, says so on stderr, and is not in the
    help."""
    for old, new in cli.RENAMED.items():
        assert new == old.replace("-", "_").replace("__", "--").replace("out_dir", "output_dir")
    (tmp_path / "run").mkdir()
    assert cli.main(["push", str(tmp_path / "run"), "--repo-id", "not a repo//id"]) == 1
    err = capsys.readouterr().err
    assert "hf-foco push: --repo-id is now spelled --repo_id" in err
    assert "--repo_id not a repo//id`" in err  # the value reached --repo_id (offline: the push stops there)
    with pytest.raises(SystemExit, match=r"--n_sigma, --n_a, .* must be >= 1 .*got 0, "):
        cli.main(["valley", "--n-sigma=0", f"--out-dir={tmp_path / 'v'}"])
    err = capsys.readouterr().err
    assert "--n-sigma is now spelled --n_sigma" in err and "--out-dir is now spelled --output_dir" in err
    with pytest.raises(SystemExit):
        cli.main(["valley", "--help"])
    text = capsys.readouterr().out
    assert "--n_sigma" in text and "--output_dir" in text and "--n-sigma" not in text and "--out-dir" not in text


@pytest.fixture
def fresh_kernel_build():
    """Forget this process's kernel build (before and after), so a test builds anew."""
    cpu_kernels.build.cache_clear()
    yield
    cpu_kernels.build.cache_clear()


def test_build_kernels_says_why_it_cannot(monkeypatch, tmp_path, capsys, fresh_kernel_build):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(cpu_kernels, "extension_name", lambda: "hf_foco_cpu_failing_build")
    with pytest.warns(UserWarning, match="compiling the fused CPU optimizer kernels"):
        assert cli.main(["build-kernels"]) == 1
    assert "hf-foco build-kernels: no fused CPU kernels (the build failed" in capsys.readouterr().err


@pytest.mark.slow
def test_build_kernels_builds_them_ahead_of_time(capsys, fresh_kernel_build):
    assert cli.main(["build-kernels"]) == 0
    path = capsys.readouterr().out.strip().split(": ", 1)[1]
    assert Path(path).is_file() and cpu_kernels.load().__file__ == path


@pytest.mark.slow
def test_an_installed_wheel_carries_the_recipes_and_hf_foco_recipes_copies_them_out(tmp_path):
    """Built and installed as a user gets it (no checkout on the path), the package lists its recipes in
    `hf-foco train`'s error and `hf-foco recipes DEST` writes the repository's recipes/ tree, file for file."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(REPO), "-w",
                    str(tmp_path / "wheel")], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    (wheel,) = (tmp_path / "wheel").glob("hf_foco-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "HF_HUB_OFFLINE": "1"}
    work = tmp_path / "elsewhere"
    work.mkdir()
    copied = subprocess.run([sys.executable, "-m", "hf_foco.cli", "recipes"], cwd=work, env=env, capture_output=True,
                            text=True, timeout=300)
    assert copied.returncode == 0, copied.stderr[-2000:]
    ours = {p.relative_to(REPO / "recipes"): p.read_bytes() for p in (REPO / "recipes").rglob("*.yaml")}
    assert f"Copied {len(ours)} files into recipes" in copied.stdout
    assert {p.relative_to(work / "recipes"): p.read_bytes() for p in (work / "recipes").rglob("*") if p.is_file()} \
        == ours
    again = subprocess.run([sys.executable, "-m", "hf_foco.cli", "recipes"], cwd=work, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 1 and "hf-foco recipes: error: recipes already exists" in again.stderr
