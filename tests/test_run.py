"""`hf-foco run` and `hf_foco.install()`: an unmodified Trainer script (tests/scripts/stock_clm.py, transformers
only) gets every hf_foco optimizer on its --optim and FocoTrainer's behaviour, a native name trains as it does
without hf_foco, and each way in that the README shows works as written.

Most runs happen in this process (`run_script`, `runpy`: no interpreter start-up, and the Hub can be patched);
a fresh interpreter checks what `python -m hf_foco.run` patches, and the README's commands run as subprocesses.
"""

import json
import math
import os
import platform
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers
import transformers.trainer
import transformers.training_args
from helpers import (
    PLACES,
    REPO,
    SEQ,
    STOCK_CLM,
    readme_blocks,
    run_stock,
    stock_clm_args,
    text_dataset,
    tiny_gpt2,
)
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import HfArgumentParser

import hf_foco
from hf_foco.cli import main as cli_main
from hf_foco.optim.registry import get_optimizer
from hf_foco.run import is_installed
from hf_foco.trainer import FocoTrainer, FocoTrainingArguments, unwrap_optimizer

torch.set_num_threads(1)
INTEGRATION = "Training with the Hugging Face Trainer"


def stock(args: list[str], install: bool) -> None:
    """Run the stock causal-LM script in this process: through `hf-foco run`, or as `python stock_clm.py` would."""
    run_stock(STOCK_CLM, args, install)


def logged_losses(out: Path) -> list[float]:
    return [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]


# -- what is patched -----------------------------------------------------------------------------------------

def test_install_puts_hf_foco_classes_where_scripts_look_and_uninstall_restores_them():
    originals = [getattr(module, name) for module, name in PLACES]
    assert originals[0].__name__ == "Trainer" and not is_installed()
    with hf_foco.installed():
        from transformers import Trainer, TrainingArguments

        assert (Trainer, TrainingArguments) == (FocoTrainer, FocoTrainingArguments)
        assert sys.modules["transformers"].Trainer is FocoTrainer  # the lazy module `import transformers` gives
        assert transformers.trainer.Trainer is FocoTrainer
        assert transformers.training_args.TrainingArguments is FocoTrainingArguments
        hf_foco.install()  # twice is harmless
        with hf_foco.installed():
            pass  # a nested block does not undo the outer one
        assert transformers.Trainer is FocoTrainer
        (args,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", "unused", "--optim", "fop", "--report_to", "none"])
        assert args.optim == "fop" and args.learning_rate == get_optimizer("fop").defaults["lr"]
    assert [getattr(module, name) for module, name in PLACES] == originals and not is_installed()


def test_a_fresh_interpreter_running_python_m_hf_foco_run_patches_what_the_script_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import json, sys\n"
        "import transformers\n"
        "from transformers import Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments\n"
        "from transformers.trainer import Trainer as ModuleTrainer\n"
        "from transformers.training_args import TrainingArguments as ModuleArguments\n"
        "import hf_foco\n"
        "args = Seq2SeqTrainingArguments('unused', optim='foco', report_to='none')\n"
        "seen = {'name': __name__, 'argv': sys.argv[1:], 'Trainer': Trainer.__name__,\n"
        "        'TrainingArguments': TrainingArguments.__name__, 'module_trainer': ModuleTrainer.__name__,\n"
        "        'module_arguments': ModuleArguments.__name__, 'lazy': type(sys.modules['transformers']).__name__,\n"
        "        'seq2seq': issubclass(Seq2SeqTrainer, hf_foco.FocoTrainer), 'seq2seq_optim': args.optim}\n"
        "hf_foco.uninstall()\n"
        "seen['after_uninstall'] = transformers.Trainer.__name__\n"
        "print(json.dumps(seen))\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "hf_foco.run", str(probe), "a", "--b", "c"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    assert seen == {"name": "__main__", "argv": ["a", "--b", "c"], "Trainer": "FocoTrainer",
                    "TrainingArguments": "FocoTrainingArguments", "module_trainer": "FocoTrainer",
                    "module_arguments": "FocoTrainingArguments", "lazy": "_LazyModule", "seq2seq": True,
                    "seq2seq_optim": "foco", "after_uninstall": "Trainer"}


def test_hf_foco_run_without_a_script_shows_how_to_use_it(capsys):
    assert cli_main(["run"]) == 2
    assert "usage: hf-foco run SCRIPT.py" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no script 'missing.py'"):
        cli_main(["run", "missing.py"])


# -- the stock script -----------------------------------------------------------------------------------------

def test_unknown_optim_gets_a_suggestion_and_the_stock_parser_refuses_registry_names(offline_data, capsys):
    with pytest.raises(SystemExit) as exit_:
        stock(stock_clm_args(offline_data / "typo", "fooco"), install=True)
    assert exit_.value.code == 2
    assert "argument --optim: invalid choice: 'fooco'. Did you mean 'foco'?" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # without hf-foco run: transformers' closed list (the README says what to do)
        stock(stock_clm_args(offline_data / "stock", "foco"), install=False)
    assert "argument --optim: invalid choice: 'foco'" in capsys.readouterr().err
    assert not (offline_data / "typo").exists() and not (offline_data / "stock").exists()


def test_a_native_optimizer_trains_the_same_weights_as_without_hf_foco(offline_data):
    plain, ours = offline_data / "plain", offline_data / "ours"
    stock(stock_clm_args(plain, "adamw_torch", "--learning_rate", "1e-3"), install=False)
    stock(stock_clm_args(ours, "adamw_torch", "--learning_rate", "1e-3"), install=True)
    theirs, mine = load_file(plain / "model.safetensors"), load_file(ours / "model.safetensors")
    assert all(torch.allclose(theirs[k], mine[k], rtol=0, atol=1e-5) for k in theirs)  # measured: 1.2e-6
    assert not torch.equal(mine["transformer.h.0.attn.c_attn.weight"], tiny_gpt2().transformer.h[0].attn.c_attn.weight)
    # transformers averages a config-built model's loss over T positions where T-1 are predicted (the gradient
    # direction, hence AdamW's step, is the same): FocoTrainer reports the true mean
    for a, b in zip(logged_losses(plain), logged_losses(ours), strict=True):
        assert b == pytest.approx(a * SEQ / (SEQ - 1), rel=1e-5)
    assert not (plain / "stability.json").exists() and (ours / "stability.json").is_file()
    card = ModelCard.load(ours / "README.md")
    assert "transformers' built-in **adamw_torch** optimizer" in card.text and "hf_foco" not in card.text


def test_the_stock_push_uploads_the_stock_result_files_and_the_pretraining_card(offline_data, hub):
    out = offline_data / "stock-foco"
    stock(stock_clm_args(out, "foco", "--push_to_hub", "--hub_model_id", "someone/stock-foco"), install=True)
    assert hub.events[0] == "create_repo"
    assert hub.uploads and all(u["allow_patterns"] for u in hub.uploads)  # hf_foco's push only, not transformers'
    repo, files = hub.commits[-1]  # save_model pushed first ("Model save"), as transformers' does
    assert repo == "someone/stock-foco"
    assert {"eval_results.json", "all_results.json", "train_results.json", "trainer_state.json", "README.md",
            "stability.json", "model.safetensors", "tokenizer.json"} <= set(files)
    card = ModelCard.load(out / "README.md")
    assert card.text.startswith("\n# stock-foco\n")
    assert "pretrained from random initialisation with the **foco** optimizer from hf_foco" in card.text
    assert card.data.pipeline_tag == "text-generation" and "optimizer-foco" in card.data.tags
    losses = logged_losses(out)
    assert f"- Final training loss: {losses[-1]:.4g} (the last logged loss, step 6)" in card.text


def test_a_stock_run_from_pretrained_weights_says_where_it_started(offline_data):
    start = offline_data / "start"
    tiny_gpt2().save_pretrained(start)
    out = offline_data / "continued"
    stock(stock_clm_args(out, "lion", "--model_name_or_path", str(start)), install=True)
    text = ModelCard.load(out / "README.md").text
    assert f"trained from the weights of `{start}` with the **lion** optimizer" in text
    assert "random initialisation" not in text


# -- the README's three ways, as written ----------------------------------------------------------------------

def test_the_readme_import_swap_is_all_a_script_needs(offline_data):
    (swap,) = [line for line in readme_blocks(INTEGRATION, "python")[0].splitlines() if line.startswith("from")]
    source = STOCK_CLM.read_text()
    assert "    Trainer,\n    TrainingArguments,\n" in source
    script = offline_data / "swapped.py"
    script.write_text(source.replace("    Trainer,\n    TrainingArguments,\n", "")
                      .replace("\nlogger = logging", f"\n{swap}\n\nlogger = logging"))
    out, data = offline_data / "swapped-fop", STOCK_CLM.parent / "data"
    saved = sys.argv
    sys.argv = [str(script), *stock_clm_args(out, "fop"), "--tokenizer_name", str(data / "tokenizer"),
                "--train_file", str(data / "train.txt"), "--validation_file", str(data / "valid.txt")]
    try:
        runpy.run_path(str(script), run_name="__main__")  # fop fails without FocoTrainer's half-batch step
    finally:
        sys.argv = saved
    assert not is_installed()
    assert json.loads((out / "run_info.json").read_text())["optimizer"]["name"] == "fop"


@pytest.mark.parametrize("block", [1, 2], ids=["FocoTrainer", "install"])
def test_the_readme_python_snippets_train(block, offline_data, monkeypatch):
    monkeypatch.chdir(offline_data)
    namespace = {"model": tiny_gpt2(), "train": text_dataset(16), "valid": text_dataset(8, seed=1)}
    try:
        exec(readme_blocks(INTEGRATION, "python")[block], namespace)
    finally:
        hf_foco.uninstall()
    trainer = namespace["trainer"]
    assert isinstance(trainer, FocoTrainer) and trainer.args.optim == "foco" and trainer.state.global_step == 6
    assert math.isfinite(next(e["train_loss"] for e in trainer.state.log_history if "train_loss" in e))


def test_the_readme_extension_point_snippet_trains_a_stock_trainer(offline_data, monkeypatch):
    monkeypatch.chdir(offline_data)
    namespace = {"model": tiny_gpt2(), "train": text_dataset(16), "valid": text_dataset(8, seed=1)}
    exec(readme_blocks(INTEGRATION, "python")[3], namespace)
    trainer = namespace["trainer"]
    assert type(trainer) is transformers.Trainer and trainer.state.global_step == 6
    optimizer = unwrap_optimizer(trainer.optimizer)
    assert type(optimizer) is get_optimizer("foco").cls and optimizer.param_groups[0]["initial_lr"] == 6e-4


def readme_commands() -> list[list[str]]:
    """The command lines of the integration section's bash block, split as a shell would."""
    (block,) = readme_blocks(INTEGRATION, "bash")
    return [shlex.split(line) for line in block.splitlines() if line.strip() and not line.startswith("#")]


def as_run_here(argv: list[str], out_root: Path) -> list[str]:
    """The README command for this interpreter (hf-foco, accelerate and python by module), writing under
    out_root instead of runs/."""
    head = {"hf-foco": [sys.executable, "-m", "hf_foco.cli"], "python": [sys.executable],
            "accelerate": [sys.executable, "-m", "accelerate.commands.launch"]}[argv[0]]
    rest = argv[2:] if argv[0] == "accelerate" else argv[1:]
    i = rest.index("--output_dir") + 1
    return [*head, *rest[:i], str(out_root / Path(rest[i]).name), *rest[i + 1:]]


@pytest.mark.slow
def test_the_readme_commands_work_as_written(tmp_path):
    commands = readme_commands()
    assert [c[0] for c in commands] == ["hf-foco", "accelerate", "accelerate", "hf-foco", "hf-foco", "hf-foco",
                                        "hf-foco"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "HF_DATASETS_CACHE": str(tmp_path / "hf_datasets")}
    for argv in commands:  # one at a time: the DDP run wants both cores
        proc = subprocess.run(as_run_here(argv, tmp_path), cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, f"{shlex.join(argv)}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    runs = {name: json.loads((tmp_path / name / "run_info.json").read_text())
            for name in ("stock-foco", "stock-fop", "stock-ddp", "stock-adamw")}
    assert {name: info["optimizer"]["name"] for name, info in runs.items()} == {
        "stock-foco": "foco", "stock-fop": "fop", "stock-ddp": "foco", "stock-adamw": "adamw_torch"}
    assert runs["stock-ddp"]["hardware"].startswith("2 process(es)") and runs["stock-ddp"]["global_batch_size"] == 16
    for name in [*runs, "stock-glue", "stock-ner"]:
        for artifact in ("model.safetensors", "eval_results.json", "all_results.json", "trainer_state.json",
                         "stability.json", "README.md"):
            assert (tmp_path / name / artifact).is_file(), f"{name}: no {artifact}"
    for name, task in (("stock-glue", "text-classification"), ("stock-ner", "token-classification")):
        assert ModelCard.load(tmp_path / name / "README.md").data.pipeline_tag == task
    assert json.loads((tmp_path / "stock-sft" / "stability.json").read_text())["status"] == "ok"  # TRL's trainer


MALLOC_PROBE = """
import ctypes
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.mallinfo2.restype = Mallinfo2
before = libc.mallinfo2().hblks  # blocks glibc serves with their own mmap (and unmaps again on free)
block = libc.malloc(64 << 20)
print(libc.mallinfo2().hblks - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator tuning is glibc's mallopt")
def test_hf_foco_run_keeps_large_blocks_in_the_heap_unless_switched_off(tmp_path):
    """A 64 MiB block (an activation of a real model) comes from the heap under `hf-foco run`, so the next step
    reuses mapped pages; with HF_FOCO_MALLOC_TUNING=0 glibc maps it afresh, as in `python SCRIPT.py`."""
    probe = tmp_path / "probe.py"
    probe.write_text(MALLOC_PROBE)
    mmapped = {}
    for switch in ("1", "0"):
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_FOCO_MALLOC_TUNING": switch}
        proc = subprocess.run([sys.executable, "-m", "hf_foco.run", str(probe)], env=env, capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        mmapped[switch] = int(proc.stdout.strip().splitlines()[-1])
    assert mmapped == {"1": 0, "0": 1}
