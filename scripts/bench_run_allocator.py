#!/usr/bin/env python
"""What the glibc allocator tuning gives `hf-foco run` users: the stock causal-LM Trainer script
(tests/scripts/stock_clm.py) under `hf-foco run --optim foco`, with and without ``HF_FOCO_MALLOC_TUNING=0``.

The two settings alternate ``--repeats`` times in fresh processes, so a noisy machine hurts both alike; each run
reports its training throughput (tokens/s over ``train_runtime``, start-up and evaluation excluded) and, for the
whole process, its minor page faults and kernel time. Medians per setting and their ratio are printed.
``--size`` picks the model: ``stock`` is the script's own 2-layer, 32-wide GPT-2 on 16-token blocks (every
tensor below glibc's mmap threshold, so the tuning has nothing to keep); ``nano`` is the gpt2-nano shape (4
layers, 128 wide) on 128-token blocks of 32 sequences, the pretraining recipe's batch, on the script's text
repeated to fill the steps.

    python scripts/bench_run_allocator.py --size nano --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "scripts" / "stock_clm.py"
SIZES = {
    "stock": {"block": 16, "batch": 8, "overrides": None},
    "nano": {"block": 128, "batch": 32, "overrides": "n_layer=4,n_embd=128,n_head=4,n_positions=128,vocab_size=32"},
}


def run_once(tuned: bool, size: dict, steps: int, train_file: Path, out: Path, threads: int) -> dict:
    """One `hf-foco run` of the stock script; its tokens/s, minor page faults and system time."""
    args = [sys.executable, "-m", "hf_foco.run", str(SCRIPT), "--do_train", "--optim", "foco", "--output_dir",
            str(out), "--max_steps", str(steps), "--per_device_train_batch_size", str(size["batch"]),
            "--block_size", str(size["block"]), "--train_file", str(train_file), "--logging_steps", str(steps),
            "--save_strategy", "no", "--use_cpu", "--seed", "0", "--disable_tqdm", "true", "--report_to", "none"]
    if size["overrides"]:
        args += ["--config_overrides", size["overrides"]]
    env = {**os.environ, "HF_FOCO_MALLOC_TUNING": "1" if tuned else "0", "OMP_NUM_THREADS": str(threads),
           "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(args, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    runtime = json.loads((out / "train_results.json").read_text())["train_runtime"]
    return {"tokens_per_s": steps * size["batch"] * size["block"] / runtime, "process_s": wall,
            "minor_faults": after.ru_minflt - before.ru_minflt, "system_s": after.ru_stime - before.ru_stime}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=SIZES, default="nano")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    size = SIZES[args.size]
    results: dict[bool, list[dict]] = {True: [], False: []}
    with tempfile.TemporaryDirectory() as tmp:
        train_file = Path(tmp) / "train.txt"  # enough blocks for the steps, whatever the block size
        text = (SCRIPT.parent / "data" / "train.txt").read_text()
        train_file.write_text(text * max(1, args.steps * size["batch"] * size["block"] // len(text.split()) + 1))
        for repeat in range(args.repeats):
            for tuned in (True, False):
                result = run_once(tuned, size, args.steps, train_file, Path(tmp) / f"run-{repeat}-{tuned}",
                                  args.threads)
                results[tuned].append(result)
                print(f"repeat {repeat} {'tuned  ' if tuned else 'untuned'}: "
                      + ", ".join(f"{k} {v:,.3f}" for k, v in result.items()), flush=True)
    medians = {tuned: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for tuned, runs in results.items()}
    print(f"\n{args.size}, {args.steps} steps x {size['batch']} x {size['block']} tokens, {args.threads} threads, "
          f"median of {args.repeats}:")
    for key in medians[True]:
        print(f"  {key:<13} tuned {medians[True][key]:>12,.3f}  untuned {medians[False][key]:>12,.3f}  "
              f"ratio {medians[True][key] / medians[False][key]:.3f}")


if __name__ == "__main__":
    main()
