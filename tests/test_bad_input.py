"""Bad input matrix: every case fails with an error that names the problem and the fix, and leaves the run's
existing checkpoint untouched.

Each case starts from an ``output_dir`` holding ``checkpoint-2`` of a real 2-step run (made once per module)
and goes through a user-facing entry point: mostly ``hf_foco.pretrain.main`` (what ``scripts/run_pretrain.py``
and ``hf-foco train`` call), which turns bad input into a one-line ``SystemExit`` before training starts; a
few go through ``create_optimizer``. Afterwards every file of ``output_dir`` has the same
bytes and modification time, and nothing new appeared there beyond what a row declares.

"NaN in the data path". Token data are integers, so a NaN cannot reach the model through the packed blocks;
it can enter in two places, both in the table:

* before tokenization, as a JSON-lines text column holding numbers or NaN (arrow then reads the column as
  numbers or JSON, which the tokenizer cannot read): ``nan_in_jsonl_text`` must be refused with the column
  named, before training;
* as a non-finite loss during training (a token whose embedding went NaN, simulated by a callback that writes
  NaN into the embedding table at every step): the stability monitor skips those steps and, after
  ``--max_bad_steps`` of them in a row, stops the job (one line, exit 1) before anything is saved, so the
  checkpoint stays the last good state (``nonfinite_loss``; it only adds the ``stability.json`` summary).
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import huggingface_hub
import huggingface_hub.errors
import pytest
import torch
from helpers import REPO, short_args, tiny_gpt2
from transformers import TrainerCallback

import hf_foco.valley.experiment
from hf_foco.cli import main as cli_main
from hf_foco.data.corpus import local_corpus
from hf_foco.optim import create_optimizer
from hf_foco.pretrain import main

RECIPE = REPO / "recipes" / "gpt2-nano" / "foco.yaml"
FOP_RECIPE, KFAC_RECIPE = (REPO / "recipes" / "gpt2-nano" / f"{name}.yaml" for name in ("fop", "kfac"))


@dataclass
class Ctx:
    """What a case may use: the run's output_dir (holding checkpoint-2), scratch space, the environment."""

    out: Path
    tmp: Path
    data_keys: list[str]
    monkeypatch: pytest.MonkeyPatch

    def main(self, *extra: str, recipe: Path | str = RECIPE, callbacks=None):
        """``run_pretrain RECIPE`` for 2 short steps into ``out``; later keys win, so ``extra`` overrides."""
        return main([str(recipe), *short_args(self.out, self.data_keys), *extra], callbacks=callbacks)

    def file(self, name: str, text: str | bytes) -> str:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text if isinstance(text, bytes) else text.encode())
        return str(path)

    def recipe(self, text: str) -> str:
        """The nano foco recipe plus ``text`` (YAML keys)."""
        return self.file("recipe.yaml", RECIPE.read_text() + text)


class PoisonEmbeddings(TrainerCallback):
    """Writes NaN into the token embedding before every step, so every loss and gradient is non-finite."""

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        with torch.no_grad():
            model.get_input_embeddings().weight.fill_(float("nan"))


def corrupt_checkpoint(c: Ctx) -> None:
    """A later checkpoint-4 of the same run whose weights were cut short (a full disk, a bad copy)."""
    bad = c.out / "checkpoint-4"
    shutil.copytree(c.out / "checkpoint-2", bad)
    weights = bad / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def kfac_under_deepspeed(c: Ctx):
    c.monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")  # what `accelerate launch --use_deepspeed` exports
    return c.main(recipe=KFAC_RECIPE)


def kfac_under_fsdp_in_code(c: Ctx):
    c.monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` exports
    return create_optimizer("kfac", tiny_gpt2())


def push_offline(c: Ctx):
    c.monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return c.main("--push_to_hub", "true", "--hub_model_id", "someone/tiny")


def without(*names: str) -> Callable[[Ctx], None]:
    """A checkpoint-3 of the run (a copy of checkpoint-2) lacking ``names``."""
    def prepare(c: Ctx) -> None:
        target = c.out / "checkpoint-3"
        shutil.copytree(c.out / "checkpoint-2", target)
        for name in names:
            (target / name).unlink()
    return prepare


def other_data(c: Ctx):
    """The same vocabulary (the tokenizer comes with the run) but other text: one file of the corpus."""
    for k in range(20):
        c.file(f"other/m{k}.py", f"def f{k}(x):\n    return x + {k}\n" * 60)
    return c.main("--max_steps", "4", "--train_files", str(c.tmp / "other" / "*.py"))


@dataclass(frozen=True)
class Case:
    id: str
    provoke: Callable[[Ctx], object]
    error: type[BaseException]
    message: str  # a regex over the error's message (and stderr): names the problem AND the fix
    writes: tuple[str, ...] = ()  # files the case may add to output_dir (never inside a checkpoint)
    prepare: Callable[[Ctx], None] | None = None  # adds to output_dir before the snapshot


EXIT = SystemExit  # main's one-line "run_pretrain: error: ..." (argparse's own errors: on stderr, code 2)
CASES = [
    Case("unknown_optimizer", lambda c: c.main("--optim", "fooco"), EXIT,
         r"argument --optim: invalid choice: 'fooco'\. Did you mean 'foco'\? Choose one of hf_foco's optimizers"),
    Case("unknown_optimizer_in_recipe", lambda c: c.main(recipe=c.recipe("optim: fooco\n")), EXIT,
         r"argument --optim: invalid choice: 'fooco'\. Did you mean 'foco'\? .*`hf-foco optimizers`"),
    Case("unknown_optimizer_in_code", lambda c: create_optimizer("fooco", tiny_gpt2()), KeyError,
         r"Unknown optimizer 'fooco'\. Did you mean 'foco'\? Known optimizers: .*focus"),
    Case("gamma_at_least_1", lambda c: c.main("--optim_args", "gamma=1.0"), EXIT,
         r"Invalid gamma=1\.0: it must be in \[0, 1\)\. Fix it with .*--optim_args"),
    Case("unknown_hyperparameter", lambda c: c.main("--optim_args", "gama=0.2"), EXIT,
         r"Unknown hyperparameter\(s\) for optimizer 'foco': 'gama' \(did you mean 'gamma'\?\)\. Valid keys:"),
    Case("negative_lr", lambda c: c.main("--learning_rate", "-0.001"), EXIT,
         r"lr=-0\.001: it must be >= 0\. Fix it with --learning_rate"),
    Case("beta_out_of_range", lambda c: c.main("--adam_beta2", "1.5"), EXIT,
         r"betas\[1\]=1\.5: it must be in \[0, 1\)\. Fix it with .*--adam_beta2"),
    Case("fop_under_fsdp", lambda c: c.main("--fsdp", "full_shard", recipe=FOP_RECIPE), EXIT,
         r"--optim fop works on whole weight matrices .* but FSDP shards the weight matrices .* Train it with "
         r"plain data parallelism"),
    Case("kfac_under_deepspeed", kfac_under_deepspeed, EXIT,
         r"--optim kfac works on whole weight matrices .* but DeepSpeed hands the optimizer flattened parameter "
         r"shards\. Train it with plain data parallelism .* or choose an optimizer that supports sharding"),
    Case("kfac_under_fsdp_in_code", kfac_under_fsdp_in_code, ValueError,
         r"KFAC works on whole weight matrices .* FSDP shards .* Train it with plain data parallelism"),
    Case("fop_batch_of_one", lambda c: c.main("--per_device_train_batch_size", "1", recipe=FOP_RECIPE), EXIT,
         r"--optim fop splits every micro-batch into two halves, which a batch of 1 example cannot be: set "
         r"--per_device_train_batch_size to 2 or more"),
    Case("missing_data", lambda c: c.main("--train_files", f"{c.tmp}/nowhere/*.py"), EXIT,
         r"no file matches '.*/nowhere/\*\.py'\. Check the path, or leave --train_files unset"),
    Case("empty_data", lambda c: c.main("--train_files", c.file("empty.txt", "\n\n")), EXIT,
         r"The corpus is empty: the local files hold no text in column 'text'\. Point --train_files"),
    Case("data_shorter_than_a_block",
         lambda c: c.main("--train_files", c.file("short.txt", "x = 1\n" * 40), "--validation_fraction", "0.5"), EXIT,
         r"split of local files .* has fewer tokens than one block of 128: add data, lower --block_size"),
    Case("train_files_a_directory", lambda c: c.main("--train_files", str(Path(c.file("data/a.bin", "x")).parent)),
         EXIT, r"--train_files: '.*/data' matches only directories \('.*/data'\), no data file\. Pass the files in "
               r"them, e\.g\. '.*/data/\*\*/\*\.txt'"),
    Case("train_files_glob_without_text", lambda c: c.main("--train_files", c.file("data/a.bin", "x")[:-5] + "*"),
         EXIT, r"Cannot tell the format of data files with suffixes \['\.bin'\]: use only text \(.*\) or only JSON"),
    Case("malformed_jsonl", lambda c: c.main("--train_files", c.file("rows.jsonl", '{"text": "a"}\n{"text": \n')),
         EXIT, r"--train_files: .*rows\.jsonl line 2 is not valid JSON \(Expecting value.*\)\. Fix that line \(one "
               r"JSON object per line"),
    Case("missing_text_column", lambda c: c.main("--text_column", "body"), EXIT,
         r"no text column 'body'; its columns are \['text'\]\. Pass --text_column with one of them"),
    Case("empty_jsonl", lambda c: c.main("--train_files", c.file("rows.jsonl", "")), EXIT,
         r"--train_files: .*rows\.jsonl holds no JSON rows \(it is empty\): add rows, one JSON object per line"),
    Case("nan_in_jsonl_text",
         lambda c: c.main("--train_files", c.file("rows.jsonl", '{"text": "def f(): pass"}\n{"text": NaN}\n' * 20)),
         EXIT, r"column 'text' holds Json\(decode=True\) values, not text only \(numbers or NaN in a JSON-lines "
               r"file\?\)\. Make every row's 'text' a string"),
    Case("nonfinite_loss",  # (main resumes from checkpoint-2, so it needs max_steps > 2 to train at all)
         lambda c: c.main("--max_steps", "6", "--max_bad_steps", "2", callbacks=[PoisonEmbeddings()]),
         EXIT, r"run_pretrain: error: Stopped at step 4: 2 consecutive steps had non-finite gradients .* No checkpoint "
               r"before them is good\. Lower --learning_rate",
         # checkpoint-2's weights led into the bad steps: marked, so no resume uses it
         writes=("checkpoint-2/nonfinite_next_step.json", "nonfinite.json", "stability.json")),
    Case("block_size_too_large", lambda c: c.main("--block_size", "512"), EXIT,
         r"--block_size 512 exceeds the model's 256 positions: lower --block_size or raise them "
         r"\(e\.g\. --config_overrides n_positions=512\)"),
    Case("unknown_preset", lambda c: c.main("--model", "gpt2-nanoo"), EXIT,
         r"Unknown GPT-2 preset 'gpt2-nanoo'\. Did you mean 'gpt2-nano'\? .* or pass --config_name"),
    Case("unknown_recipe_key", lambda c: c.main(recipe=c.recipe("learning_rat: 1.0e-3\n")), EXIT,
         r"Unknown key\(s\) in recipe .*'learning_rat' \(did you mean 'learning_rate'\?\)\. Run with --help"),
    Case("null_integer_in_recipe", lambda c: c.main(recipe=c.recipe("gradient_accumulation_steps: null\n")), EXIT,
         r"gradient_accumulation_steps: None is not a whole number; write e\.g\. `gradient_accumulation_steps: 1`"),
    Case("float_integer_in_recipe", lambda c: c.main(recipe=c.recipe("save_total_limit: 2.5\n")), EXIT,
         r"save_total_limit: 2\.5 is not a whole number"),
    Case("malformed_recipe", lambda c: c.main(recipe=c.file("bad.yaml", "optim: foco\nlearning_rate: [1\n")), EXIT,
         r"Recipe '.*bad\.yaml' is not valid YAML at line 3, column 1: .*\. Fix the syntax"),
    Case("non_utf8_recipe", lambda c: c.main(recipe=c.file("latin1.yaml", b"optim: foco\n# caf\xe9\n")), EXIT,
         r"Recipe '.*latin1\.yaml' is not UTF-8 text \(invalid continuation byte at byte 17\): save it as UTF-8"),
    Case("missing_recipe", lambda c: c.main(recipe=c.tmp / "foco.yml"), EXIT,
         r"Recipe '.*foco\.yml' does not exist \(`hf-foco recipes` copies the recipes installed with hf_foco into "
         r"\./recipes\)"),
    Case("corrupted_checkpoint", lambda c: c.main("--resume_from_checkpoint", str(c.out / "checkpoint-4")), EXIT,
         r"--resume_from_checkpoint .*checkpoint-4 cannot be resumed from: model\.safetensors is corrupt "
         r"\(SafetensorError: .*\)\. Resume from another, intact checkpoint-N directory", prepare=corrupt_checkpoint),
    Case("missing_checkpoint", lambda c: c.main("--resume_from_checkpoint", str(c.out / "checkpoint-9")), EXIT,
         r"--resume_from_checkpoint .*checkpoint-9 cannot be resumed from: no such directory\. Resume from another"),
    Case("push_without_network", push_offline, EXIT,
         r"HF_HUB_OFFLINE=1 forbids network access\. The local run is unchanged \(train without --push_to_hub to keep "
         r"it local\); on a machine with network access run `hf-foco push"),
    # Resuming with other settings than the checkpoint's: refused, naming each change.
    Case("changed_optimizer", lambda c: c.main("--max_steps", "4", "--optim", "focus"), EXIT,
         r"checkpoint-2 was saved by another optimizer than this run's \(.*name: 'foco' -> 'focus'.*\).* pass "
         r"--reset_optimizer_state true"),
    Case("changed_learning_rate", lambda c: c.main("--max_steps", "4", "--learning_rate", "0.0123"), EXIT,
         r"another optimizer than this run's \(lr: [0-9.e-]+ -> 0\.0123\)"),
    Case("changed_learning_rate_and_scheduler",  # two sections at once: both named in one refusal
         lambda c: c.main("--max_steps", "4", "--learning_rate", "0.0123", "--lr_scheduler_type", "constant"), EXIT,
         r"checkpoint-2 was saved by another optimizer than this run's \(lr: [0-9.e-]+ -> 0\.0123\) and with other "
         r"settings than this run's \(training: lr_scheduler_type: 'cosine' -> 'constant'\).*Rerun with the "
         r"checkpoint's settings.*--reset_optimizer_state true .*\(for the optimizer's change only\)"),
    Case("changed_config_overrides", lambda c: c.main("--max_steps", "4", "--config_overrides", "resid_pdrop=0.5"),
         EXIT, r"saved with other settings than this run's \(model: config_overrides: None -> 'resid_pdrop=0\.5'\)"
               r".*pass a new --output_dir \(or --overwrite_output_dir true\)"),
    Case("changed_data", other_data, EXIT,
         r"saved with other settings than this run's \(data: train_files: .* -> .*other/\*\.py.*Rerun with the "
         r"checkpoint's settings"),
    Case("changed_batch_size", lambda c: c.main("--max_steps", "4", "--per_device_train_batch_size", "2"), EXIT,
         r"saved with other settings than this run's \(training: per_device_train_batch_size: 4 -> 2\)"),
    Case("mistyped_config_override", lambda c: c.main("--config_overrides", "n_layers=1"), EXIT,
         r"--config_overrides: gpt2 configs have no 'n_layers' \(did you mean 'n_layer'\?\)"),
    Case("explicit_checkpoint_without_optimizer", lambda c: c.main(
        "--max_steps", "4", "--resume_from_checkpoint", str(c.out / "checkpoint-3")), EXIT,
        r"checkpoint-3 cannot be resumed from: no optimizer state .*or pass --reset_optimizer_state true",
        prepare=without("optimizer.pt")),
    Case("explicit_checkpoint_without_trainer_state", lambda c: c.main(
        "--max_steps", "4", "--resume_from_checkpoint", str(c.out / "checkpoint-3")), EXIT,
        r"checkpoint-3 cannot be resumed from: no trainer_state\.json, the file written last\. Resume from another",
        prepare=without("trainer_state.json")),
    Case("explicit_checkpoint_of_a_file", lambda c: c.main(
        "--max_steps", "4", "--resume_from_checkpoint", c.file("ckpt.safetensors", "x")), EXIT,
        r"ckpt\.safetensors cannot be resumed from: no such directory"),
    Case("resume_false_over_a_checkpoint", lambda c: c.main(
        "--max_steps", "4", recipe=c.recipe("resume_from_checkpoint: false\n")), EXIT,
        r"--resume_from_checkpoint false: .* holds checkpoint-2, which starting from scratch would overwrite\. Leave the "
        r"flag out to resume from it"),
    Case("path_option_true", lambda c: c.main("--data_cache_dir", "true"), EXIT,
         r"--data_cache_dir 'true' reads as a boolean, not a path .*: pass the path \(\./true if"),
    Case("path_option_yes_in_recipe", lambda c: c.main(recipe=c.recipe("tokenizer_name: yes\n")), EXIT,
         r"--tokenizer_name 'true' reads as a boolean, not a path"),
    Case("recipe_mapping_for_a_text_option", lambda c: c.main(recipe=c.recipe("optim_args: {gamma: 0.2}\n")), EXIT,
         r"Recipe .*: optim_args: a mapping \(\{'gamma': 0\.2\}\), but --optim_args takes one value"),
    Case("recipe_list_for_a_number", lambda c: c.main(recipe=c.recipe("learning_rate: [1.0e-3, 2.0e-3]\n")), EXIT,
         r"learning_rate: \[0\.001, 0\.002\] is not a number"),
    Case("recipe_not_yaml", lambda c: c.main(recipe=c.file("foco.json", '{"optim": "foco"}')), EXIT,
         r"'.*foco\.json' is not a recipe: a recipe is a YAML file named \*\.yaml or \*\.yml, given first"),
    Case("explicit_checkpoint_without_scheduler", lambda c: c.main(
        "--max_steps", "4", "--resume_from_checkpoint", str(c.out / "checkpoint-3")), EXIT,
        r"checkpoint-3 cannot be resumed from: no scheduler state", prepare=without("scheduler.pt")),
    # Arguments transformers accepts but trains wrongly with.
    Case("native_lr_inf", lambda c: c.main("--optim", "adamw_torch", "--learning_rate", "inf"), EXIT,
         r"--learning_rate inf is not a finite number: pass one like 3e-4"),
    Case("native_beta_out_of_range", lambda c: c.main("--optim", "adamw_torch", "--optim_args", "", "--adam_beta2", "1.5"),
         EXIT,
         r"--optim adamw_torch: Invalid beta parameter at index 1: 1\.5\. Fix it with .*--adam_beta1/--adam_beta2"),
    Case("native_optimizer_with_the_recipes_gamma", lambda c: c.main("--optim", "adamw_torch"), EXIT,  # foco.yaml
         r"--optim_args gamma=0\.2: transformers' adamw_torch does not take it, and would drop it silently\. Remove "
         r"it \(--optim_args '' clears a recipe's\)"),
    Case("native_lr_nan", lambda c: c.main("--optim", "adamw_torch", "--learning_rate", "nan"), EXIT,
         r"--learning_rate nan is not a finite number"),
    Case("registry_lr_inf", lambda c: c.main("--learning_rate", "inf"), EXIT,
         r"lr must be finite, got inf\. Fix it with --learning_rate"),
    Case("zero_gradient_accumulation", lambda c: c.main("--gradient_accumulation_steps", "0"), EXIT,
         r"--gradient_accumulation_steps 0: it must be an integer >= 1"),
    Case("negative_gradient_accumulation", lambda c: c.main("--gradient_accumulation_steps", "-2"), EXIT,
         r"--gradient_accumulation_steps -2: it must be an integer >= 1"),
    Case("negative_max_steps", lambda c: c.main("--max_steps", "-5"), EXIT,
         r"--max_steps -5: it must be > 0 \(or -1 to train --num_train_epochs\)"),
    Case("zero_eval_blocks", lambda c: c.main("--max_eval_blocks", "0"), EXIT,
         r"--max_eval_blocks 0: it must be >= 1 \(or leave it unset\)"),
    Case("zero_vocabulary", lambda c: c.main("--tokenizer_vocab_size", "0"), EXIT,
         r"--tokenizer_vocab_size 0: it must be >= 1\."),
    # Counts, sizes and numbers that train nothing or wrongly.
    Case("zero_batch_size", lambda c: c.main("--per_device_train_batch_size", "0"), EXIT,
         r"--per_device_train_batch_size 0: it must be >= 1\."),
    Case("zero_save_steps", lambda c: c.main("--save_strategy", "steps", "--save_steps", "0"), EXIT,
         r"--save_steps 0(\.0)? with --save_strategy steps: it must be > 0"),
    Case("zero_epochs", lambda c: c.main("--max_steps", "-1", "--num_train_epochs", "0"), EXIT,
         r"--num_train_epochs 0(\.0)? trains nothing: pass a positive number of epochs, or --max_steps N\."),
    Case("max_grad_norm_nan", lambda c: c.main("--max_grad_norm", "nan"), EXIT,
         r"--max_grad_norm nan: it must be a finite number >= 0 \(0: no clipping\)\."),
    Case("zero_layers", lambda c: c.main("--config_overrides", "n_layer=0"), EXIT,
         r"--config_overrides n_layer=0: n_layer must be a whole number >= 1\."),
    Case("vocab_size_override", lambda c: c.main("--config_overrides", "vocab_size=100"), EXIT,
         r"--config_overrides vocab_size=100: a fresh model takes its vocabulary size and special token ids from the "
         r"tokenizer \(vocab_size=512\)\. Drop them .* --tokenizer_vocab_size N"),
    Case("config_override_of_the_wrong_type", lambda c: c.main("--config_overrides", "resid_pdrop=high"), EXIT,
         r"--config_overrides resid_pdrop='high': .*Field 'resid_pdrop'"),
    Case("optim_kwargs_not_json", lambda c: c.main("--optim_kwargs", "{gamma: 0.2}"), EXIT,
         r"--optim_kwargs '\{gamma: 0\.2\}' must be a JSON object: write it like '\{\"gamma\": 0\.2\}'"),
    Case("optim_kwargs_a_list", lambda c: c.main("--optim_kwargs", "[0.2]"), EXIT,
         r"--optim_kwargs '\[0\.2\]' must be a JSON object"),
    Case("unwritable_output_dir",
         lambda c: c.main("--output_dir", f"{c.file('taken', 'a file')}/run"), EXIT,
         r"--output_dir .*/taken/run cannot hold the run's checkpoints: .*/taken is a file, not a directory\. Pass "
         r"a --output_dir you can write to"),
]


def snapshot(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: (sha256 of its bytes, modification time in ns)."""
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def checkpoint(workspace):
    """``checkpoint-2`` (weights, optimizer, scheduler, RNG and trainer state) of a real 2-step foco run."""
    out = workspace["root"] / "seed_run"
    main([str(RECIPE), *short_args(out, workspace["data_keys"]), "--save_strategy", "steps", "--save_steps", "2"])
    return out / "checkpoint-2"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_fails_clearly_and_leaves_the_checkpoint_untouched(case, workspace, checkpoint, tmp_path,
                                                                     monkeypatch, capsys):
    out = tmp_path / "run"
    shutil.copytree(checkpoint, out / checkpoint.name)  # copy2: the modification times travel too
    ctx = Ctx(out=out, tmp=tmp_path / "scratch", data_keys=workspace["data_keys"], monkeypatch=monkeypatch)
    ctx.tmp.mkdir()
    if case.prepare:
        case.prepare(ctx)
    before = snapshot(out)
    assert {"model.safetensors", "optimizer.pt", "trainer_state.json"} <= {Path(k).name for k in before}
    with pytest.raises(case.error) as raised:
        case.provoke(ctx)
    error = raised.value
    text = str(error.code if isinstance(error, SystemExit) else error) + capsys.readouterr().err
    assert re.search(case.message, text, flags=re.DOTALL), text[-2000:]
    if isinstance(error, SystemExit) and isinstance(error.code, str):
        assert error.code.startswith("run_pretrain: error: ") and "\n" not in error.code  # one line, no traceback
    after = snapshot(out)
    assert {k: after.get(k) for k in before} == before, "an existing file was changed or removed"
    assert sorted(set(after) - set(before)) == sorted(case.writes)


# -- the other commands: the same rule (one line naming the problem and the fix, before any work, nothing
# written), through hf_foco.cli.main.

@pytest.fixture
def saved_run(tmp_path):
    """A run directory as `hf-foco push` finds it: weights, config and a card of its own."""
    out = tmp_path / "run"
    tiny_gpt2().save_pretrained(out)
    (out / "README.md").write_text("the card as the run wrote it\n")
    return out


def _refuse_network(self, *args, **kwargs):
    raise huggingface_hub.errors.HTTPError("[Errno -3] Temporary failure in name resolution")


@pytest.mark.parametrize(("repo_id", "network", "message"), [
    ("not a repo//id", True, r"--repo_id 'not a repo//id' is not a Hub repository id \(.*\)\. Pass one like "
                             r"'USER/NAME'\."),
    ("someone/tiny", False, r"Cannot push .* to someone/tiny: HTTPError: \[Errno -3\] Temporary failure in name "
                            r"resolution\. Check the network, .* run `hf-foco push .* --repo_id someone/tiny` again"),
])
def test_push_fails_before_rewriting_the_card(saved_run, repo_id, network, message, monkeypatch, capsys):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", _refuse_network)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", _refuse_network)
    before = snapshot(saved_run)
    assert cli_main(["push", str(saved_run), "--repo_id", repo_id]) == 1
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err
    assert snapshot(saved_run) == before


def test_push_refuses_dataset_info_that_is_not_a_json_object(saved_run, capsys):
    with pytest.raises(SystemExit) as raised:
        cli_main(["push", str(saved_run), "--repo_id", "someone/tiny", "--dataset_info", "{name: x}"])
    assert raised.value.code == 2
    assert "argument --dataset_info: '{name: x}' is not a JSON object: write it like" in capsys.readouterr().err


STUDY = f"""name: broken
recipe: {REPO}/recipes/gpt2-nano/{{optimizer}}.yaml
seeds: [0]
optimizers:
  foco: {{learning_rates: [1.0e-3]}}
"""


@pytest.mark.parametrize(("text", "message"), [
    (b"name: x\nrecipe: [\n", r"Study '.*study\.yaml' is not valid YAML at line 3, column 1: .*Fix the syntax"),
    (b"name: caf\xe9\n", r"Study '.*study\.yaml' is not UTF-8 text \(invalid continuation byte at byte 9\)"),
])
def test_compare_refuses_a_malformed_study(tmp_path, text, message, capsys):
    study = tmp_path / "study.yaml"
    study.write_bytes(text)
    assert cli_main(["compare", str(study), "--output_dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("lines", "message"), [
    ("optimizers:\n  foco: [1.0e-3]\n", r"optimizer 'foco' must map to its settings, not to list \[0\.001\]\. Write "
                                        r"it like `foco: \{learning_rates: \[3\.0e-4, 1\.0e-3\]\}`"),
    ("optimizers:\n  foco: {learning_rates: [1.0e-3], overrides: [max_steps]}\n",
     r"overrides of optimizer 'foco' must be a mapping, not a list \(\['max_steps'\]\)"),
    ("optimizers:\n  foco: {learning_rates: [1.0e-3]}\nlearning_rates_from: yes\n",
     r"learning_rates_from must be a string, not a boolean \(YAML reads unquoted true/false/yes/no as one\)"),
    ("optimizers:\n  foco: {learning_rates: [1.0e-3]}\noverrides: [max_steps, 10]\n",
     r"overrides must be a mapping, not a list"),
    ("optimizers:\n  foco: {learning_rates: [1.0e-3]}\nanalysis: {spike_windw: 8}\n",
     r"analysis: .*unexpected keyword argument 'spike_windw'.* It takes spike_window"),
    ("optimizers:\n  foco: {learning_rates: [1.0e-3]}\nseeds: [0, true]\n", r"'seeds' must be a non-empty list of integers"),
    ("optimizers:\n  foco: {learning_rates: [1.0e-3]}\nworld_size: two\n", r"world_size must be an integer, not a string"),
])
def test_compare_refuses_a_study_of_the_wrong_shape(tmp_path, lines, message, capsys):
    """Every key's value is checked for its YAML type before it is used: one line, exit 2, nothing written."""
    study = tmp_path / "study.yaml"
    study.write_text(f"name: broken\nrecipe: {REPO}/recipes/gpt2-nano/{{optimizer}}.yaml\n" + lines)
    assert cli_main(["compare", str(study), "--output_dir", str(tmp_path / "out"), "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_compare_report_only_without_a_finished_run_fails(tmp_path, capsys):
    """Nothing has run yet: the report is empty, and the command says so with exit 1."""
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    assert cli_main(["compare", str(study), "--output_dir", str(tmp_path / "out"), "--report_only"]) == 1
    assert re.search(r"none of the study's 1 run\(s\) finished; run the study first \(the same command without "
                     r"--report_only\)", capsys.readouterr().err)


def test_compare_fails_when_no_run_of_the_study_finished(tmp_path, capsys):
    """An override (here: a launcher) that breaks every run is a broken study, not a result: exit 1."""
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    failing = f"{sys.executable} -c 'import sys; sys.exit(3)'"
    assert cli_main(["compare", str(study), "--output_dir", str(tmp_path / "out"), "--launcher", failing]) == 1
    assert re.search(r"none of the study's 1 run\(s\) finished; the first one's log is .*train\.log\. Fix the "
                     r"study's overrides or recipe, then rerun with --retry_failed", capsys.readouterr().err)


def test_compare_refuses_an_output_dir_that_is_a_file(tmp_path, capsys):
    study = tmp_path / "study.yaml"
    study.write_text(STUDY)
    (tmp_path / "taken").write_text("a file")
    assert cli_main(["compare", str(study), "--output_dir", str(tmp_path / "taken"), "--dry_run"]) == 2
    assert re.search(r"the study's output_dir .*taken cannot hold its runs: .*taken is a file, not a directory\. "
                     r"Pass another --output_dir", capsys.readouterr().err)


@pytest.mark.parametrize("out_dir", ["taken", "taken/valley"])
def test_valley_refuses_an_out_dir_that_is_a_file_before_the_sweep(tmp_path, out_dir, monkeypatch):
    (tmp_path / "taken").write_text("a file")

    def no_sweep(*args, **kwargs):
        raise AssertionError("the sweep started")

    monkeypatch.setattr(hf_foco.valley.experiment, "sweep", no_sweep)
    with pytest.raises(SystemExit, match=r"--output_dir .*taken.* cannot hold the CSV and plots: .*taken is a file, "
                                         r"not a directory\. Pass another --output_dir"):
        cli_main(["valley", "--preset", "quick", "--output_dir", str(tmp_path / out_dir)])
    assert (tmp_path / "taken").read_text() == "a file"


def test_valley_refuses_an_empty_axis(tmp_path):
    with pytest.raises(SystemExit, match=r"--n_sigma, --n_a, .* must be >= 1 .*got 0, "):
        cli_main(["valley", "--preset", "quick", "--n_sigma", "0", "--output_dir", str(tmp_path / "v")])


def test_text_that_is_not_utf8_is_read_with_a_warning_that_counts_it(tmp_path, caplog):
    """Latin-1 and binary bytes decode to U+FFFD (training goes on); the warning says how many."""
    (tmp_path / "latin1.txt").write_bytes("x = 'café'\n".encode("latin-1") * 3)  # one bad byte per line
    (tmp_path / "good.txt").write_text("y = 2\n" * 3)
    with caplog.at_level(logging.WARNING):
        data = local_corpus([str(tmp_path / "*.txt")], [str(tmp_path / "good.txt")], 0.5,
                            cache_dir=str(tmp_path / "cache"))
    assert sum(text.count("\ufffd") for text in data["train"]["text"]) == 3
    assert re.search(r"The train files hold 3 characters that are not UTF-8 \(\d+\.\d% of the text\), read as "
                     r"U\+FFFD: re-encode them as UTF-8", caplog.text), caplog.text
    assert "validation" not in caplog.text  # good.txt is clean
