"""What ``hf-foco prepare-data`` costs: CPU time per billion tokens, on a sample at hand.

    python scripts/bench_prepare.py [prepare-data flags, without --prepared_data]
    python scripts/bench_prepare.py --builtin_corpus source --tokenizer_vocab_size 4096 --num_proc 2

The source is read and the tokenizer loaded or trained once first (both are cached), so what is timed is
what a preparation of an already downloaded dataset costs: loading it, tokenizing in ``--num_proc``
processes and writing the shards, into a temporary directory that is removed afterwards. CPU time counts
this process and its tokenizing workers (user + system); the wall time is printed beside it.
"""

from __future__ import annotations

import resource
import sys
import tempfile
import time
from pathlib import Path

from transformers import HfArgumentParser

from hf_foco.data import DataArguments, PrepareArguments, prepare_token_shards
from hf_foco.data.pipeline import source_and_tokenizer


def _cpu_seconds() -> float:
    return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                  resource.getrusage(resource.RUSAGE_CHILDREN)))


def main(argv: list[str]) -> int:
    parser = HfArgumentParser((DataArguments, PrepareArguments), prog="bench_prepare.py", description=__doc__)
    data_args, prepare_args = parser.parse_args_into_dataclasses(argv)
    source_and_tokenizer(data_args)  # warm the caches: the download and the tokenizer are not what is timed
    with tempfile.TemporaryDirectory() as tmp:
        data_args.prepared_data = str(Path(tmp) / "prepared")
        cpu, wall = _cpu_seconds(), time.perf_counter()
        index, _ = prepare_token_shards(data_args, prepare_args)
        cpu, wall = _cpu_seconds() - cpu, time.perf_counter() - wall
    tokens = sum(split["tokens"] for split in index["splits"].values())
    print(f"{tokens:,} tokens ({index['tokenizer']['name']}, {index['dtype']}) with --num_proc {prepare_args.num_proc}: "
          f"{cpu:.1f} CPU-s, {wall:.1f} s wall; {cpu / 60 / tokens * 1e9:.0f} CPU-minutes per billion tokens, "
          f"{tokens / wall / 1e6:.2f}M tokens/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
