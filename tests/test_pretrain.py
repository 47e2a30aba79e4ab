"""scripts/run_pretrain.py end to end: every nano recipe, 2-process CPU DDP, and bad input caught early."""

import json
import subprocess
import sys

import pytest
import torch
from helpers import REPO, SCRIPT, short_args
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoTokenizer

from hf_foco.data import prepare_lm_data
from hf_foco.models import build_model
from hf_foco.pretrain import check_commands, main, parse_args

# The pipeline's five recipes (K-FAC/FOP recipes next to them are tested with those optimizers).
RECIPES = [REPO / "recipes" / "gpt2-nano" / f"{name}.yaml" for name in ("adamw", "signum", "lion", "focus", "foco")]


@pytest.mark.slow
def test_every_nano_recipe_trains_and_leaves_a_loadable_checkpoint(workspace):
    runs = {}
    for recipe in RECIPES:  # concurrently: the runs are mostly interpreter start-up
        out = workspace["root"] / "runs" / recipe.stem
        cmd = [sys.executable, str(SCRIPT), str(recipe), *short_args(out, workspace["data_keys"])]
        runs[recipe.stem] = (out, subprocess.Popen(cmd, env=workspace["env"], stdout=subprocess.PIPE,
                                                   stderr=subprocess.STDOUT, text=True))
    validation = prepare_lm_data(workspace["data_args"]).validation
    blocks = torch.as_tensor(validation[:]["input_ids"], dtype=torch.long)
    for name, (out, proc) in runs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} failed:\n{log[-3000:]}"
        assert str(out.resolve()) in log
        for artifact in ("model.safetensors", "tokenizer.json", "loss_curve.png", "README.md", "stability.json"):
            assert (out / artifact).is_file(), f"{name}: no {artifact}"
        assert json.loads((out / "run_info.json").read_text())["optimizer"]["name"] == name
        card = ModelCard.load(out / "README.md")  # the recipe's license; local files have no Hub dataset id
        assert card.data.license == "apache-2.0" and card.data.datasets is None and card.data.eval_results
        model = AutoModelForCausalLM.from_pretrained(out).eval()
        tokenizer = AutoTokenizer.from_pretrained(out)
        assert model.config.vocab_size == len(tokenizer) == 512
        assert tokenizer.decode(tokenizer("def f(x):\n    return x")["input_ids"]) == "def f(x):\n    return x"
        # The reloaded weights reproduce the eval loss the run reported, on the same validation blocks.
        with torch.no_grad():
            loss = model(input_ids=blocks, labels=blocks).loss.item()
        reported = json.loads((out / "eval_results.json").read_text())["eval_loss"]
        assert loss == pytest.approx(reported, rel=1e-4), name


@pytest.mark.slow
def test_cpu_ddp_config_runs_two_ranks_that_end_identical(workspace, tmp_path):
    """Real 2-process gloo DDP from recipes/accelerate_configs/cpu_ddp.yaml with 1-bit sign gradient
    compression; each rank dumps its weights and log history."""
    wrapper = tmp_path / "ddp_run.py"
    wrapper.write_text(
        "import sys, torch\n"
        "from transformers import TrainerCallback\n"
        "from hf_foco.pretrain import main\n"
        "class Dump(TrainerCallback):\n"
        "    def on_train_end(self, args, state, control, model=None, **kw):\n"
        "        torch.save({'world_size': args.world_size, 'state': model.state_dict(),\n"
        "                    'logs': state.log_history},\n"
        f"                   r'{tmp_path}/rank%d.pt' % args.process_index)\n"
        "sys.exit(main(sys.argv[1:], callbacks=[Dump()]))\n")
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(REPO / "recipes" / "accelerate_configs" / "cpu_ddp.yaml"), str(wrapper),
           str(REPO / "recipes" / "gpt2-nano" / "foco.yaml"), *short_args(out, workspace["data_keys"]),
           "--max_steps", "3", "--gradient_compression", "sign"]
    proc = subprocess.run(cmd, env=workspace["env"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt") for i in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # 1 sign bit + one fp32 scale per 64 entries (1.5 bits), all-gathered from 2 ranks: 1/21 of fp32's bytes.
    ratios = [log["comm_ratio"] for log in ranks[0]["logs"] if "comm_ratio" in log]
    assert ratios and all(1 / 22 < r < 1 / 20 for r in ratios), ratios
    initial = build_model(AutoModelForCausalLM.from_pretrained(out).config, seed=0).state_dict()  # recipe seed
    for key, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][key]), key
    assert all(not torch.equal(ranks[0]["state"][k], initial[k]) for k in initial if k.endswith("c_attn.weight"))


def test_command_line_keys_override_the_recipe():
    model_args, data_args, args = parse_args([str(REPO / "recipes" / "gpt2-nano" / "lion.yaml"), "--learning_rate",
                                              "1e-4", "--block_size", "64", "--output_dir", "elsewhere",
                                              "--license", "mit"])
    assert (args.optim, args.learning_rate, args.weight_decay) == ("lion", 1e-4, 0.5)  # decay from the recipe
    assert args.license == "mit"  # the recipe says apache-2.0
    assert (data_args.block_size, args.output_dir, model_args.model) == (64, "elsewhere", "gpt2-nano")


@pytest.mark.parametrize("extra, message", [
    (["--model", "gpt2-nanoo"], "Unknown GPT-2 preset 'gpt2-nanoo'. Did you mean 'gpt2-nano'"),
    (["--block_size", "512"], "block_size 512 exceeds the model's 256 positions"),
    (["--train_files", "/nonexistent/*.txt"], "no file matches '/nonexistent/\\*.txt'"),
    (["--text_column", "body"], "no text column 'body'; its columns are \\['text'\\]"),
])
def test_bad_arguments_fail_before_training(workspace, tmp_path, monkeypatch, extra, message):
    for key, value in workspace["env"].items():
        monkeypatch.setenv(key, value)
    recipe = str(REPO / "recipes" / "gpt2-nano" / "foco.yaml")
    with pytest.raises(SystemExit, match="run_pretrain: error: .*" + message):
        main([recipe, *short_args(tmp_path / "run", workspace["data_keys"]), *extra])
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


def test_unknown_recipe_key_is_named_with_a_suggestion(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("optim: foco\nlearning_rat: 1e-3\noutput_dir: x\n")
    with pytest.raises(ValueError, match="Unknown key.*'learning_rat' \\(did you mean 'learning_rate'\\?\\)"):
        parse_args([str(recipe)])


def test_the_job_checks_command_lines_without_running_them(tmp_path):
    """What a study asks before it starts any run (``python -m hf_foco.pretrain --check``): each command line's
    refusal, or None; argparse's own message for a malformed one."""
    recipe = str(REPO / "recipes" / "gpt2-nano" / "signum.yaml")
    problems = check_commands([[recipe, "--max_steps", "3"], [recipe, "--adam_beta2", "0.9"],
                               [recipe, "--max_steps", "three"], [recipe, "--config_overrides", "n_layers=1"]])
    assert problems[0] is None
    assert "Optimizer 'signum' takes no betas: drop --adam_beta1/--adam_beta2" in problems[1]
    assert "argument --max_steps" in problems[2] and "invalid int value: 'three'" in problems[2]
    assert "gpt2 configs have no 'n_layers' (did you mean 'n_layer'?)" in problems[3]
    assert not (tmp_path / "trainer_output").exists()
