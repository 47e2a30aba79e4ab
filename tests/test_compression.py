"""DDP gradient compression hooks on 2 gloo processes, against references computed from raw gradients."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hf_foco.distributed import COMPRESSION_HOOKS, CompressionState, register_compression
from hf_foco.distributed.compression import pack_signs, unpack_signs
from hf_foco.optim import create_optimizer

WORLD, STEPS = 2, 3


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 5))


def _batch(rank: int, step: int):
    gen = torch.Generator().manual_seed(100 * step + rank)  # different data on each rank
    return torch.randn(8, 6, generator=gen), torch.randn(8, 5, generator=gen)


def _loss(model, batch):
    x, y = batch
    return (model(x) - y).square().mean()


def _gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(WORLD)]
    dist.all_gather(out, t.contiguous())
    return out


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _sign_compressed(x: torch.Tensor, block_size: int | None) -> torch.Tensor:
    """What a rank should send for one tensor: per block of its flattened entries, mean|block| times
    sign(block) with +1 for zeros."""
    blocks = x.flatten().split(block_size or x.numel())
    return torch.cat([b.abs().mean() * torch.where(b >= 0, 1.0, -1.0) for b in blocks]).view_as(x)


def _run(name: str, **options) -> dict:
    """STEPS foco steps on a DDP model with hook ``name``, checked at every step against a plain replica
    that yields this rank's raw gradient. Tiny buckets: one tensor per bucket, rebuilt after step 1."""
    ddp = nn.parallel.DistributedDataParallel(_model(), bucket_cap_mb=1e-4)
    state = register_compression(ddp, name, **options)
    replica = copy.deepcopy(ddp.module)
    optimizer = create_optimizer("foco", ddp.module, lr=1e-2)
    params = dict(ddp.module.named_parameters())
    out = {"avg": 0.0, "feedback": 0.0, "sent": 0.0, "residual_norm": 0.0, "ratios": []}
    for step in range(STEPS):
        batch = _batch(dist.get_rank(), step)
        replica.load_state_dict(ddp.module.state_dict())
        replica.zero_grad()
        _loss(replica, batch).backward()
        raw = {k: p.grad.clone() for k, p in replica.named_parameters()}
        old = {k: state.residuals.get(p, torch.zeros_like(p)).clone() for k, p in params.items()}
        optimizer.zero_grad()
        _loss(ddp, batch).backward()
        received = {k: p.grad.clone() for k, p in params.items()}
        if name == "sign":
            new = {k: state.residuals[p].view_as(p) for k, p in params.items()}
            # (a) the decoded average is the mean over ranks of scale*sign(raw + residual)
            block = options["block_size"]
            expected = {k: sum(_sign_compressed(x, block) for x in _gather(raw[k] + old[k])) / WORLD
                        for k in params}
            out["avg"] = max(out["avg"], _max_diff(received, expected))
            # (b) error feedback: sent + new residual == grad + old residual, and what the ranks sent
            # (grad + old - new) averages to what every rank received
            mine = {k: _sign_compressed(raw[k] + old[k], block) for k in params}
            kept = {k: raw[k] + old[k] - new[k] for k in params}
            out["feedback"] = max(out["feedback"], _max_diff(kept, mine))
            sent_avg = {k: sum(_gather(kept[k])) / WORLD for k in params}
            out["sent"] = max(out["sent"], _max_diff(received, sent_avg))
            out["residual_norm"] = max(out["residual_norm"], max(r.abs().max().item() for r in new.values()))
        else:
            expected = {k: sum(_gather(raw[k])) / WORLD for k in params}
            out["avg"] = max(out["avg"], _max_diff(received, expected))
        optimizer.step()
        out["ratios"].append(state.bytes_sent / state.fp32_bytes)
    flat = torch.cat([p.detach().flatten() for p in params.values()])
    out["rank_param_diff"] = (_gather(flat)[0] - _gather(flat)[1]).abs().max().item()
    out["bytes_sent"], out["fp32_bytes"] = state.bytes_sent, state.fp32_bytes
    return out


def _worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    results = {name: _run(name) for name in ("none", "bf16")}
    results["sign"] = _run("sign", block_size=64)  # tensors of 192 and 160 entries: partial last blocks
    results["sign per tensor"] = _run("sign", block_size=None)
    results["powersgd"] = _run("powersgd", start_powerSGD_iter=2, matrix_approximation_rank=1)
    if rank == 0:
        torch.save(results, out_file)
    dist.barrier()  # no rank tears gloo down while another still talks to it (it can abort the process)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("compression")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp / "results.pt")), nprocs=WORLD, join=True)
    return torch.load(tmp / "results.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sign", "sign per tensor"])
def test_sign_hook_averages_scaled_signs_with_error_feedback(results, name):
    r = results[name]
    assert r["avg"] < 1e-6
    assert r["feedback"] < 1e-6
    assert r["sent"] < 1e-6
    assert r["residual_norm"] > 1e-4  # the residual really holds what 1 bit could not carry


@pytest.mark.slow
@pytest.mark.parametrize("name", ["none", "bf16", "sign", "sign per tensor", "powersgd"])
def test_ranks_end_with_identical_parameters(results, name):
    assert results[name]["rank_param_diff"] == 0.0


@pytest.mark.slow
def test_byte_counters(results):
    assert results["none"]["bytes_sent"] == results["none"]["fp32_bytes"] > 0
    assert results["bf16"]["bytes_sent"] * 2 == results["bf16"]["fp32_bytes"]
    assert results["sign"]["bytes_sent"] * 16 <= results["sign"]["fp32_bytes"]
    # PowerSGD all-reduces everything for start_powerSGD_iter = 2 steps, then low-rank factors.
    ratios = results["powersgd"]["ratios"]
    assert ratios[0] == ratios[1] == 1.0 and ratios[2] < 1.0


@pytest.mark.slow
def test_uncompressed_hooks_average_the_raw_gradients(results):
    assert results["none"]["avg"] < 1e-6
    assert results["bf16"]["avg"] < 1e-2  # bf16 keeps 8 significant bits


def test_pack_signs_round_trips():
    x = torch.randn(37)
    packed = pack_signs(x >= 0)
    assert packed.dtype == torch.uint8 and packed.numel() == 5
    assert torch.equal(unpack_signs(packed, 37), torch.where(x >= 0, 1.0, -1.0))


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="Unknown gradient compression 'sgin'.*'sign'"):
        register_compression(nn.Linear(2, 2), "sgin")
    with pytest.raises(ValueError, match="block_size=4 must be an int >= 8"):
        COMPRESSION_HOOKS["sign"](CompressionState("sign"), block_size=4)
    with pytest.raises(ValueError, match="'bf16' takes no options"):
        COMPRESSION_HOOKS["bf16"](CompressionState("bf16"), block_size=4)
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        register_compression(nn.Linear(2, 2), "sign")
    assert set(COMPRESSION_HOOKS) >= {"none", "bf16", "sign", "powersgd"}
