#!/usr/bin/env python
"""One training part of ``scripts/gpu_smoke.sh``: a GPT-2 preset trained on synthetic tokens through FocoTrainer,
as the pretraining job trains (the same argument classes, optimizer grouping, stability monitor; bf16 and
``--torch_compile`` when asked), printing its throughput and what ``torch.compile`` did.

The data are ``--distinct_sequences`` random sequences of ``--block_size`` tokens over the model's whole
vocabulary, repeated: the loss must fall (they are memorised), so a run that does not train fails, and no
dataset or tokenizer is needed (offline). Reported, and written to ``OUTPUT_DIR/smoke.json``:

* tokens/s over the steps after ``--timing_warmup`` (compilation and the first steps excluded; wall clock,
  the GPU synchronised at each step's end);
* the graphs ``torch.compile`` built by the end of the warm-up and after it: none may be built after it (the
  learning rate changes at every step of the schedule, so a step that recompiles when it does shows here);
* whether the parameters were sharded (FSDP2 DTensors), and the peak GPU memory.

Exit status 1 when the loss did not fall, a graph was compiled after the warm-up, or ``--expect_sharded``
found plain parameters. Examples (what the smoke script runs; any TrainingArguments key works):

    python scripts/gpu_smoke.py --optim foco --max_steps 100 --bf16 true --torch_compile true --output_dir runs/smoke/foco
    accelerate launch --config_file recipes/accelerate_configs/fsdp.yaml --num_processes 1 scripts/gpu_smoke.py \\
        --optim foco --max_steps 20 --bf16 true --expect_sharded true --output_dir runs/smoke/fsdp
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from torch._dynamo.utils import counters
from transformers import HfArgumentParser, TrainerCallback

from hf_foco.models import ModelArguments, build_model, model_config
from hf_foco.trainer import FocoTrainer, FocoTrainingArguments

DEFAULTS = {"model": "gpt2-small", "per_device_train_batch_size": 16, "max_steps": 100, "logging_steps": 10,
            "save_strategy": "no", "eval_strategy": "no", "report_to": "none", "warmup_steps": 10,
            "ddp_find_unused_parameters": False, "include_num_input_tokens_seen": "no", "disable_tqdm": True}


@dataclass
class SmokeArguments:
    block_size: int = field(default=1024, metadata={"help": "Tokens per sequence."})
    distinct_sequences: int = field(default=64, metadata={"help": "Random sequences the data repeats."})
    timing_warmup: int = field(default=5, metadata={"help": "Steps left out of tokens/s and of the compile count."})
    expect_sharded: bool = field(default=False, metadata={"help": "Fail unless the parameters are FSDP2 DTensors."})


class Clock(TrainerCallback):
    """Wall time and the number of compiled graphs at every step's end."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available() and not args.use_cpu:
            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), counters["stats"]["unique_graphs"]))


def main(argv: list[str]) -> int:
    parser = HfArgumentParser((ModelArguments, SmokeArguments, FocoTrainingArguments))
    parser.set_defaults(**DEFAULTS)
    model_args, smoke, args = parser.parse_args_into_dataclasses(args=argv)
    if args.max_steps <= smoke.timing_warmup + 1:
        raise SystemExit(f"gpu_smoke: error: --max_steps {args.max_steps} leaves no timed step after "
                         f"--timing_warmup {smoke.timing_warmup}: raise --max_steps.")
    config = model_config(model_args, smoke.block_size)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, config.vocab_size, (smoke.distinct_sequences, smoke.block_size), generator=generator)
    count = args.max_steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
    ids = rows[torch.arange(count) % smoke.distinct_sequences].tolist()
    clock = Clock()
    trainer = FocoTrainer(model=build_model(config, seed=args.seed), args=args, callbacks=[clock],
                          train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}))
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    (start, graphs_warm), (end, graphs_end) = clock.marks[smoke.timing_warmup], clock.marks[-1]
    tokens = (len(clock.marks) - 1 - smoke.timing_warmup) * args.per_device_train_batch_size * \
        args.gradient_accumulation_steps * args.world_size * smoke.block_size
    optim = str(getattr(args.optim, "value", args.optim))  # transformers' own names arrive as its enum
    result = {
        "optim": optim, "model": model_args.model, "device": str(args.device), "processes": args.world_size,
        "steps": trainer.state.global_step, "tokens_per_s": tokens / (end - start),
        "losses": losses, "graphs_by_warmup": graphs_warm,
        "graphs_after_warmup": graphs_end - graphs_warm,
        "sharded": any(type(p).__name__ == "DTensor" for p in trainer.model.parameters()),
        "peak_memory_gb": torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else None,
    }
    problems = [what for what, bad in (
        (f"the logged loss did not fall by 0.1 ({losses})", len(losses) < 2 or not losses[-1] < losses[0] - 0.1),
        (f"{result['graphs_after_warmup']} graph(s) compiled after the warm-up", result["graphs_after_warmup"] > 0),
        ("the parameters are not sharded", smoke.expect_sharded and not result["sharded"])) if bad]
    result["problems"] = problems
    if trainer.is_world_process_zero():
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        (Path(args.output_dir) / "smoke.json").write_text(json.dumps(result, indent=2))
        print(f"\n{optim}: {result['tokens_per_s']:,.0f} tokens/s on {result['processes']} x {result['device']}, "
              f"logged losses {[round(x, 3) for x in losses]}, graphs compiled by step {smoke.timing_warmup}: "
              f"{graphs_warm}, after it: {result['graphs_after_warmup']}, sharded: {result['sharded']}"
              + "".join(f"\nPROBLEM: {p}" for p in problems))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
