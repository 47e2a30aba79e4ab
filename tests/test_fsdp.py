"""Elementwise optimizers on FSDP2-sharded DTensor parameters (2 gloo CPU processes), against a
single-process run on the unsharded model, and their state through torch distributed checkpoint. Their
default and foreach steps work on the local shards (no DTensor op in a step); ``foreach=False`` runs the
single-tensor reference on the DTensors themselves."""

from __future__ import annotations

import traceback

import pytest
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode

from hf_foco.optim import create_optimizer

WORLD, BEFORE, AFTER = 2, 3, 2
# case -> (registry name, overrides): each optimizer's default step, and foco's other two paths.
ELEMENTWISE = {"foco": ("foco", {}), "foco_foreach": ("foco", {"foreach": True}),
               "foco_single": ("foco", {"foreach": False}), "focus": ("focus", {}), "signum": ("signum", {}),
               "lion": ("lion", {})}
KRONECKER = ("fop", "kfac")


def _model(seed: int = 0) -> nn.Module:
    """An odd row count (5) makes FSDP's dim-0 shards uneven; LayerNorm gives undecayed 1-D params."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 32), nn.LayerNorm(32), nn.Tanh(), nn.Linear(32, 5))


def _sharded(mesh, seed: int = 0) -> nn.Module:
    model = _model(seed)
    for layer in (model[0], model[3]):
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def _batch(step: int):
    gen = torch.Generator().manual_seed(step)
    return torch.randn(8, 6, generator=gen), torch.randn(8, 5, generator=gen)


class DTensorOps(TorchDispatchMode):
    """Counts the operations called on DTensors (each costs a Python dispatch and sharding propagation)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += DTensor in types
        return func(*args, **(kwargs or {}))


def _train(model, optimizer, steps, rank=None, ops: DTensorOps | None = None) -> None:
    """``rank`` None: the whole batch; else this rank's half (FSDP averages the two halves' gradients).
    ``ops`` counts the DTensor operations of the optimizer steps after the first (which creates the state)."""
    for step in steps:
        x, y = _batch(step)
        if rank is not None:
            x, y = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        optimizer.zero_grad()
        (model(x) - y).square().mean().backward()
        if ops is not None and step > 0:
            with ops:
                optimizer.step()
        else:
            optimizer.step()


def _full(model) -> dict[str, torch.Tensor]:
    return {k: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone()
            for k, p in model.named_parameters()}


def _max_diff(a: dict, b: dict) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def _check(case: str, mesh, checkpoint: str) -> dict:
    name, overrides = ELEMENTWISE[case]
    rank = dist.get_rank()
    reference = _model()
    reference_opt = create_optimizer(name, reference, lr=1e-2)  # plain tensors: the foreach path
    model = _sharded(mesh)
    optimizer = create_optimizer(name, model, lr=1e-2, **overrides)  # built AFTER fully_shard, as accelerate does
    _train(reference, reference_opt, range(BEFORE))
    ops = DTensorOps()
    _train(model, optimizer, range(BEFORE), rank, ops)
    dcp.save({"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optimizer)},
             checkpoint_id=checkpoint)
    _train(reference, reference_opt, range(BEFORE, BEFORE + AFTER))
    _train(model, optimizer, range(BEFORE, BEFORE + AFTER), rank)

    resumed = _sharded(mesh, seed=1)  # different init: only the checkpoint can make it match
    resumed_opt = create_optimizer(name, resumed, lr=1e-2, **overrides)
    loaded = {"model": get_model_state_dict(resumed), "optim": get_optimizer_state_dict(resumed, resumed_opt)}
    dcp.load(loaded, checkpoint_id=checkpoint)
    set_model_state_dict(resumed, loaded["model"])
    set_optimizer_state_dict(resumed, resumed_opt, loaded["optim"])
    _train(resumed, resumed_opt, range(BEFORE, BEFORE + AFTER), rank)

    state = optimizer.state[next(iter(model.parameters()))]
    resumed_state = resumed_opt.state[next(iter(resumed.parameters()))]
    return {
        "vs_reference": _max_diff(_full(model), _full(reference)),
        "moved": _max_diff(_full(model), _full(_model())),
        "resumed_vs_uninterrupted": _max_diff(_full(resumed), _full(model)),
        "state_types": sorted({type(v).__name__ for k, v in state.items() if k != "step"}),
        "state_dtypes": {k: (v.dtype, resumed_state[k].dtype) for k, v in state.items()},
        "steps": (state["step"].item(), resumed_state["step"].item()),
        "dtensor_ops_per_step": ops.count / (BEFORE - 1),
    }


def _refusals(mesh) -> dict:
    out = {}
    for name in KRONECKER:
        try:
            create_optimizer(name, _sharded(mesh))
            out[name] = "no error"
        except ValueError as err:
            out[name] = str(err)
    plain = _model()
    optimizer = create_optimizer("fop", plain)  # built before sharding: attach() must catch it
    fully_shard(plain, mesh=mesh)
    try:
        optimizer.attach(plain)
        out["fop_attach"] = "no error"
    except ValueError as err:
        out["fop_attach"] = str(err)
    return out


def _worker(rank: int, init_file: str, root: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (WORLD,))
    results = {}
    for name in ELEMENTWISE:
        try:
            results[name] = _check(name, mesh, f"{root}/ckpt_{name}")
        except Exception:  # reported per optimizer by the tests below
            results[name] = traceback.format_exc()
    results["refusals"] = _refusals(mesh)
    torch.save(results, f"{root}/results_{rank}.pt")
    dist.barrier()  # no rank tears gloo down while another still talks to it (it can abort the process)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    root = tmp_path_factory.mktemp("fsdp")
    mp.spawn(_worker, args=(str(root / "init"), str(root)), nprocs=WORLD, join=True)
    return [torch.load(root / f"results_{rank}.pt") for rank in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_sharded_training_matches_unsharded_and_resumes_from_dcp(results, name):
    for rank_results in results:
        r = rank_results[name]
        assert isinstance(r, dict), r  # the traceback of a failure
        assert r["state_types"] == ["DTensor"]  # state created lazily on the shards
        assert r["moved"] > 1e-2
        assert r["vs_reference"] < 1e-5
        assert r["resumed_vs_uninterrupted"] == 0.0
        assert r["steps"] == (BEFORE + AFTER, BEFORE + AFTER)
        assert all(saved == loaded for saved, loaded in r["state_dtypes"].values())
        if name == "foco_single":  # the reference: DTensor ops on every parameter
            assert r["dtensor_ops_per_step"] >= len(list(_model().parameters()))
        else:  # the local shards alone
            assert r["dtensor_ops_per_step"] == 0
    if name.startswith("foco"):
        assert results[0][name]["state_dtypes"]["exp_avg"][1] == torch.bfloat16
        assert results[0][name]["state_dtypes"]["pull"][1] == torch.float16


@pytest.mark.slow
@pytest.mark.parametrize("name", [*KRONECKER, "fop_attach"])
def test_kronecker_optimizers_refuse_sharded_models(results, name):
    assert "FSDP" in results[0]["refusals"][name]
