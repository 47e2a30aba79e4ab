"""DDP gradient compression on 2 CPU processes (gloo): final eval loss, bytes sent, step time.

Trains gpt2-nano once per hook (none, bf16, sign, powersgd) from the same initialisation on the same
batches (hf_foco's built-in corpus: the Python standard library, packed in blocks), in one run, and
prints per hook the final eval loss, the bytes each rank sent per step, their ratio to an fp32
all-reduce (ring model, see hf_foco.distributed.compression), and the step time relative to "none".

    python scripts/bench_compression.py                      # 60 steps, foco, ~5 min on 2 busy cores
    python scripts/bench_compression.py --steps 200 --optim adamw
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from transformers import get_cosine_schedule_with_warmup

from hf_foco.distributed import COMPRESSION_HOOKS, register_compression
from hf_foco.models import build_model
from hf_foco.optim import RegisteredNames, create_optimizer

WORLD = 2


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hooks", nargs="+", default=["none", "bf16", "sign", "powersgd"],
                        choices=list(COMPRESSION_HOOKS))
    parser.add_argument("--optim", default="foco", choices=RegisteredNames())
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch_size", type=int, default=8, help="sequences per rank per step")
    parser.add_argument("--block_size", type=int, default=128)
    parser.add_argument("--eval_blocks", type=int, default=64)
    parser.add_argument("--sign_block_size", type=int, default=64, help="entries per scale of the sign hook")
    parser.add_argument("--powersgd_rank", type=int, default=4)
    parser.add_argument("--powersgd_start", type=int, default=None,
                        help="plain all-reduce steps before PowerSGD (default: 10%% of --steps, >= 2)")
    return parser.parse_args(argv)


def load_blocks(args) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(train blocks for every step and rank, eval blocks, vocabulary size) from hf_foco's data pipeline."""
    from hf_foco.data import DataArguments, prepare_lm_data

    data = prepare_lm_data(DataArguments(block_size=args.block_size, max_eval_blocks=args.eval_blocks))
    needed = args.steps * WORLD * args.batch_size
    if len(data.train) < needed:
        raise ValueError(f"The corpus has {len(data.train)} training blocks; {needed} are needed: "
                         "lower --steps or --batch_size.")
    train = torch.as_tensor(data.train[:needed]["input_ids"]).view(args.steps, WORLD, args.batch_size, -1)
    return train, torch.as_tensor(data.validation[:]["input_ids"]), len(data.tokenizer)


def run_hook(args, name: str, train: torch.Tensor, evaluation: torch.Tensor, vocab_size: int) -> dict:
    rank = dist.get_rank()
    model = build_model("gpt2-nano", seed=0, vocab_size=vocab_size)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    options = {"sign": dict(block_size=args.sign_block_size)}.get(name, {})
    if name == "powersgd":
        start = args.powersgd_start if args.powersgd_start is not None else max(2, args.steps // 10)
        options = dict(matrix_approximation_rank=args.powersgd_rank, start_powerSGD_iter=start)
    state = register_compression(ddp, name, **options)
    optimizer = create_optimizer(args.optim, model, lr=args.lr)
    schedule = get_cosine_schedule_with_warmup(optimizer, max(1, args.steps // 10), args.steps)
    dist.barrier()
    start_time = time.perf_counter()
    for step in range(args.steps):
        batch = train[step, rank]
        loss = ddp(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start_time
    model.eval()
    with torch.no_grad():
        eval_loss = sum(model(input_ids=b, labels=b).loss.item() for b in evaluation.split(16))
        eval_loss /= len(evaluation.split(16))
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    other = torch.empty_like(flat)
    dist.broadcast(other if rank else flat, src=0)
    return dict(hook=name, train_loss=loss.item(), eval_loss=eval_loss,
                bytes_per_step=state.bytes_sent / args.steps, ratio=state.ratio, seconds=seconds,
                ranks_agree=bool(rank == 0 or torch.equal(flat, other)))


def worker(rank: int, init_file: str, args, train, evaluation, vocab_size) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    rows = [run_hook(args, name, train, evaluation, vocab_size) for name in args.hooks]
    agree = [None] * WORLD
    dist.all_gather_object(agree, [r["ranks_agree"] for r in rows])
    if rank == 0:
        print_table(args, rows, [all(flags) for flags in zip(*agree)])
    dist.destroy_process_group()


def print_table(args, rows: list[dict], agree: list[bool]) -> None:
    base = next((r for r in rows if r["hook"] == "none"), rows[0])
    print(f"\n{args.optim}, lr {args.lr}, {args.steps} steps x {WORLD} ranks x {args.batch_size} x "
          f"{args.block_size} tokens; eval on {args.eval_blocks} held-out blocks")
    print("| hook | final train loss | eval loss | eval - none | bytes/step/rank | vs fp32 all-reduce "
          "| step time vs none | ranks identical |")
    print("|---|---|---|---|---|---|---|---|")
    for row, same in zip(rows, agree):
        print(f"| {row['hook']} | {row['train_loss']:.4f} | {row['eval_loss']:.4f} | "
              f"{row['eval_loss'] - base['eval_loss']:+.4f} | {row['bytes_per_step']:,.0f} | "
              f"1/{1 / row['ratio']:.1f} | "
              f"{row['seconds'] / base['seconds']:.2f} | {same} |")


def main(argv=None) -> None:
    args = parse_args(argv)
    train, evaluation, vocab_size = load_blocks(args)
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(worker, args=(os.path.join(tmp, "init"), args, train, evaluation, vocab_size), nprocs=WORLD)


if __name__ == "__main__":
    main()
