"""FOP: the projection against a dense Fisher, β* = 0 is K-FAC, accumulation, DDP, FocoTrainer and resume."""

import contextlib

import pytest
import torch
import torch.multiprocessing as mp
from kfac_testing import Classifier, StubTrainer, tiny_gpt2
from torch import nn

from hf_foco.optim import FOP, KFAC, create_optimizer, param_groups
from hf_foco.optim.fop import fisher_orthogonal_component
from hf_foco.optim.kfac import sample_fisher_factors


def _vec(weight, bias):
    """Column-major vec of an (out, in) weight, then the bias: vec(G W A) = (A ⊗ G) vec(W)."""
    return torch.cat([weight.double().T.reshape(-1), bias.double()])


def test_projection_and_update_match_a_dense_fisher():
    torch.manual_seed(0)
    model = Classifier(nn.Linear, sizes=(3, 4, 3))
    x, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    lr, damping = 0.5, 0.05
    optimizer = FOP(model.parameters(), model=model, lr=lr, damping=damping, beta_max=10.0, eta_max=10.0)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer.training_step(StubTrainer(), model, {"x": x, "labels": labels})
    params = list(model.parameters())
    g1 = torch.autograd.grad(model(x[:4], labels[:4]).loss, params)
    g2 = torch.autograd.grad(model(x[4:], labels[4:]).loss, params)
    optimizer.step()

    for index, layer in enumerate(optimizer.layers):
        w, b = 2 * index, 2 * index + 1  # parameter positions of this layer
        state = optimizer.state[layer.weight]
        a, g = state["A"].double(), state["G"].double()
        pi = ((a.trace() / a.shape[0]) / (g.trace() / g.shape[0])).sqrt()
        a_d = a + damping ** 0.5 * pi * torch.eye(a.shape[0], dtype=torch.float64)
        g_d = g + damping ** 0.5 / pi * torch.eye(g.shape[0], dtype=torch.float64)
        fisher = torch.block_diag(torch.kron(a, g), g)
        # The bias block is 1 ⊗ G; its scalar A-side is damped like A.
        fisher_inv = torch.block_diag(torch.linalg.inv(torch.kron(a_d, g_d)),
                                      torch.linalg.inv(g_d) / (1 + damping ** 0.5 * pi))
        v1, v2 = _vec(g1[w], g1[b]), _vec(g2[w], g2[b])
        g_avg, g_diff = (v1 + v2) / 2, v1 - v2
        g_perp = g_diff - (g_diff @ fisher @ g_avg) / (g_avg @ fisher @ g_avg) * g_avg
        beta = (g_avg @ fisher_inv @ g_perp) / (g_perp @ fisher_inv @ g_perp)
        g_comb = g_avg + beta * g_perp
        eta = (g_avg @ fisher_inv @ g_comb) / (g_comb @ fisher_inv @ g_comb)
        expected = -lr * eta * fisher_inv @ g_comb
        moved = _vec(params[w] - before[w], params[b] - before[b])
        torch.testing.assert_close(moved, expected, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(state["beta"].double(), beta, rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(state["eta"].double(), eta, rtol=1e-4, atol=1e-7)
        assert abs(beta) > 1e-3  # the projection did something

        perp = fisher_orthogonal_component(
            layer, [(g1[w] + g2[w]) / 2, (g1[b] + g2[b]) / 2], [g1[w] - g2[w], g1[b] - g2[b]],
            state["A"], state["G"])
        perp = _vec(*perp)
        assert abs(perp @ fisher @ g_avg) <= 1e-5 * perp.norm() * (fisher @ g_avg).norm()
        torch.testing.assert_close(perp, g_perp, rtol=1e-4, atol=1e-7)


def test_gradient_clipping_scales_the_fop_step():
    """The Trainer clips p.grad (= g_avg) only, not the stashed halves; the step must shrink alike."""
    x, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    moves = []
    for scale in (1.0, 0.25):
        torch.manual_seed(0)
        model = Classifier(nn.Linear, sizes=(3, 4, 3))  # both layers are K-FAC layers
        optimizer = FOP(model.parameters(), model=model, lr=0.5, damping=0.05, beta_max=10.0, eta_max=10.0)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.training_step(StubTrainer(), model, {"x": x, "labels": labels})
        torch.nn.utils.clip_grad_norm_(model.parameters(), scale * torch.nn.utils.get_total_norm(
            [p.grad for p in model.parameters()]))
        optimizer.step()
        assert 0.5 < optimizer.state[optimizer.layers[1].weight]["eta"] < 1.0  # β* ≠ 0 moved η* off 1
        moves.append([p.detach() - b for p, b in zip(model.parameters(), before)])
    for full, clipped in zip(*moves):
        torch.testing.assert_close(clipped, 0.25 * full, rtol=1e-4, atol=1e-8)


def _train(optimizer, model, batches, trainer=None):
    for batch in batches:
        optimizer.training_step(trainer or StubTrainer(), model, batch)
        optimizer.step()
        model.zero_grad()


def _batches(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = [torch.randint(0, 32, (4, 8), generator=generator) for _ in range(count)]
    return [{"input_ids": i, "labels": i} for i in ids]


def test_beta_zero_reproduces_kfac():
    results = []
    for cls, extra in ((KFAC, {}), (FOP, {"beta_max": 0.0})):
        model = tiny_gpt2()
        optimizer = cls(param_groups(model, 0.1), model=model, lr=0.05, update_freq=2, **extra)
        torch.manual_seed(1)
        _train(optimizer, model, _batches(3))
        results.append([p.detach().clone() for p in model.parameters()])
    start = [p.detach() for p in tiny_gpt2().parameters()]
    for kfac_p, fop_p in zip(*results):
        torch.testing.assert_close(fop_p, kfac_p, rtol=1e-5, atol=1e-6)
    assert max((p - p0).abs().max() for p, p0 in zip(results[0], start)) > 1e-3


def test_gradient_accumulation_equals_one_large_batch():
    """Two micro-batches of 4 give the halves {0,1 | 2,3} + {4,5 | 6,7}: one batch ordered 0,1,4,5,2,3,6,7."""
    first, second = _batches(2, seed=5)
    merged = {k: torch.cat([first[k][:2], second[k][:2], first[k][2:], second[k][2:]]) for k in first}
    results = []
    for accumulation in (1, 2):
        model = tiny_gpt2()
        optimizer = FOP(param_groups(model, 0.1), model=model, lr=0.05, update_freq=10)
        torch.manual_seed(2)
        _train(optimizer, model, [merged])  # step 0 (factor refresh) identical in both runs
        if accumulation == 1:
            _train(optimizer, model, [merged])
        else:
            trainer = StubTrainer(accumulation=2)
            optimizer.training_step(trainer, model, first)
            optimizer.training_step(trainer, model, second)
            optimizer.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for one, two in zip(*results):
        torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-6)


def test_an_odd_micro_batch_keeps_the_full_batch_gradient():
    """Documented rule: halves of 1 and 2 examples, each loss weighted by its share."""
    model = tiny_gpt2()
    optimizer = FOP(param_groups(model, 0.1), model=model)
    ids = torch.randint(0, 32, (3, 8))
    optimizer.training_step(StubTrainer(), model, {"input_ids": ids, "labels": ids})
    expected = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, list(model.parameters()))
    for p, g in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)


def test_bad_input_is_refused_clearly(monkeypatch):
    model = tiny_gpt2()
    optimizer = create_optimizer("fop", model)
    ids = torch.randint(0, 32, (1, 8))
    with pytest.raises(ValueError, match="dataloader_drop_last"):
        optimizer.training_step(StubTrainer(), model, {"input_ids": ids, "labels": ids})
    model(input_ids=ids, labels=ids).loss.backward()  # a plain loop: no half-batch gradients
    with pytest.raises(RuntimeError, match="half-batch gradients"):
        optimizer.step()
    for env, word in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")):
        with monkeypatch.context() as patch:
            patch.setenv(env, "true")
            with pytest.raises(ValueError, match=word):
                create_optimizer("kfac", model)


def test_non_finite_steps_leave_the_optimizer_untouched():
    """What the stability guard relies on: bad factors are discarded, skip_step() makes step() a no-op."""
    model = tiny_gpt2()
    optimizer = FOP(param_groups(model, 0.1), model=model, lr=0.05, update_freq=1)
    good, bad = _batches(2, seed=3)
    _train(optimizer, model, [good])
    weights = [p.detach().clone() for p in model.parameters()]
    optimizer.training_step(StubTrainer(), model, good)
    for p in model.parameters():  # the guard found non-finite gradients and dropped them
        p.grad = None
    optimizer.skip_step()
    optimizer.step()
    for p, before in zip(model.parameters(), weights):
        assert torch.equal(p, before)
    factors = {k: optimizer.state[optimizer.layers[0].weight][k].clone() for k in ("A", "G_inv")}
    with torch.no_grad():
        model.transformer.wte.weight[bad["input_ids"][0, 0]] = float("nan")
    optimizer.update_curvature(bad)
    for key, value in factors.items():
        assert torch.equal(optimizer.state[optimizer.layers[0].weight][key], value)


def _ddp_train(rank) -> dict:
    """Two accumulated FOP steps on this rank's data. The DDP wrapper is freed when this returns, while
    the process group is still alive: freeing its reducer after destroy_process_group can deadlock gloo's
    teardown (the reducer's last reference to the group then runs the group's destructor under the GIL)."""
    model = tiny_gpt2()
    ddp = nn.parallel.DistributedDataParallel(model)
    optimizer = FOP(param_groups(model, 0.1), model=model, lr=0.05, update_freq=1)
    optimizer.attach(ddp)
    batches = _batches(5, seed=10 + rank)  # each rank sees its own data and samples its own labels
    torch.manual_seed(rank)
    local_a = sample_fisher_factors(model, optimizer.layers, batches[0])[optimizer.layers[0].name][0]
    trainer = StubTrainer(accumulation=2)
    for step in range(2):
        for micro in range(2):
            with ddp.no_sync() if micro == 0 else contextlib.nullcontext():
                optimizer.training_step(trainer, ddp, batches[1 + 2 * step + micro])
        optimizer.step()
        ddp.zero_grad()
    return {"params": torch.cat([p.detach().reshape(-1) for p in model.parameters()]),
            "A": optimizer.state[optimizer.layers[0].weight]["A"].clone(), "local_A": local_a}


def _ddp_worker(rank, world, init_file, out_dir):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_ddp_train(rank), f"{out_dir}/rank{rank}.pt")
        torch.distributed.barrier()  # no rank tears gloo down while another still talks to it
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_ranks_stay_identical(tmp_path):
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) for rank in (0, 1))
    assert not torch.allclose(rank0["local_A"], rank1["local_A"])  # the ranks' own curvature differs...
    torch.testing.assert_close(rank0["A"], rank1["A"], rtol=0, atol=0)  # ...the averaged factors do not
    torch.testing.assert_close(rank0["params"], rank1["params"], rtol=0, atol=0)
    start = torch.cat([p.detach().reshape(-1) for p in tiny_gpt2().parameters()])
    assert (rank0["params"] - start).abs().max() > 1e-3


def _patterned_dataset(count=64, length=16, vocab=128):
    from datasets import Dataset

    generator = torch.Generator().manual_seed(0)
    rows = []
    for _ in range(count):
        start, stride = torch.randint(0, vocab, (2,), generator=generator).tolist()
        rows.append([(start + (stride % 5 + 1) * j) % vocab for j in range(length)])
    return Dataset.from_dict({"input_ids": rows, "labels": rows})


def _nano_trainer(optim, output_dir, max_steps, **overrides):
    """gpt2-nano's architecture, shrunk (2 layers, width 64) to keep the test within seconds."""
    from hf_foco.models import build_model
    from hf_foco.trainer import FocoTrainer, FocoTrainingArguments

    data = _patterned_dataset()
    settings = dict(output_dir=str(output_dir), optim=optim, learning_rate=3e-3, optim_kwargs={"adamw_lr": 3e-3},
                    max_steps=max_steps, per_device_train_batch_size=8, per_device_eval_batch_size=32,
                    report_to=[], use_cpu=True, disable_tqdm=True, save_strategy="no", logging_steps=5, seed=0)
    args = FocoTrainingArguments(**{**settings, **overrides})
    model = build_model("gpt2-nano", seed=0, vocab_size=128, n_layer=2, n_embd=64, n_head=2, n_positions=32)
    return FocoTrainer(model=model, args=args, train_dataset=data, eval_dataset=data.select(range(32)),
                       compute_metrics=lambda _: {})


@pytest.mark.parametrize("optim", ["kfac", "fop"])
def test_focotrainer_lowers_the_nano_gpt2_loss(tmp_path, optim):
    trainer = _nano_trainer(optim, tmp_path, max_steps=12)
    start = trainer.evaluate()["eval_loss"]
    trainer.train()
    assert trainer.evaluate()["eval_loss"] < start - 0.3


def test_resume_from_checkpoint_is_exact(tmp_path):
    full = _nano_trainer("fop", tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    full.train()
    optimizer_file = tmp_path / "checkpoint-3" / "optimizer.pt"
    state = torch.load(optimizer_file, weights_only=True)["state"]
    assert any("G_inv" in s for s in state.values()) and any("exp_avg" in s for s in state.values())
    resumed = _nano_trainer("fop", tmp_path / "again", max_steps=6)
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-3"))
    for (name, p), q in zip(full.model.named_parameters(), resumed.model.parameters()):
        assert torch.equal(p, q), name

