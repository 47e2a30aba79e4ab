"""FOP: the projection against a dense Fisher, β* = 0 is K-FAC, FocoTrainer's half-batch step (odd batches,
accumulation), FocoTrainer runs and resume. (FOP under real DDP: tests/test_ddp.py.)"""

import pytest
import torch
from helpers import Classifier, common_args, kronecker_step, text_dataset, tiny_gpt2, token_batches
from torch import nn

from hf_foco.optim import FOP, KFAC, create_optimizer, param_groups
from hf_foco.optim.kfac import curvature, fisher_orthogonal_component
from hf_foco.trainer import FocoTrainer, FocoTrainingArguments, unwrap_optimizer

# The classic K-FAC step (absolute π-split damping, SGD momentum on F⁻¹g): what the dense reference computes.
RAW = dict(normalize_update=False, relative_damping=False, adamw_lr=0.5, weight_decay=0.0)


def _vec(weight, bias):
    """Column-major vec of an (out, in) weight, then the bias: vec(G W A) = (A ⊗ G) vec(W)."""
    return torch.cat([weight.double().T.reshape(-1), bias.double()])


def test_projection_and_update_match_a_dense_fisher(num_threads):
    torch.manual_seed(0)
    model = Classifier(nn.Linear, sizes=(3, 4, 3))
    x, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    lr, damping = 0.5, 0.05
    optimizer = FOP(model.parameters(), model=model, lr=lr, damping=damping, beta_max=10.0, eta_max=10.0,
                    **RAW)
    before = [p.detach().clone() for p in model.parameters()]
    params = list(model.parameters())
    g1 = torch.autograd.grad(model(x[:4], labels[:4]).loss, params)
    g2 = torch.autograd.grad(model(x[4:], labels[4:]).loss, params)
    kronecker_step(optimizer, model, {"x": x, "labels": labels})

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


def test_gradient_clipping_scales_the_fop_step(num_threads):
    """The Trainer clips p.grad (= g_avg) only, not the half-batch difference; the step must shrink alike."""
    x, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    moves = []
    for scale in (1.0, 0.25):
        torch.manual_seed(0)
        model = Classifier(nn.Linear, sizes=(3, 4, 3))  # both layers are K-FAC layers
        optimizer = FOP(model.parameters(), model=model, lr=0.5, damping=0.05, beta_max=10.0, eta_max=10.0,
                        **RAW)
        before = [p.detach().clone() for p in model.parameters()]
        optimizer.update_curvature({"x": x})
        model(x, labels).loss.backward()
        params = optimizer.half_batch_params
        g1 = torch.autograd.grad(model(x[:4], labels[:4]).loss, params)
        g2 = torch.autograd.grad(model(x[4:], labels[4:]).loss, params)
        optimizer.receive_half_batch_difference([a - b for a, b in zip(g1, g2)])
        torch.nn.utils.clip_grad_norm_(model.parameters(), scale * torch.nn.utils.get_total_norm(
            [p.grad for p in model.parameters()]))
        optimizer.step()
        assert 0.5 < optimizer.state[optimizer.layers[1].weight]["eta"] < 1.0  # β* ≠ 0 moved η* off 1
        moves.append([p.detach() - b for p, b in zip(model.parameters(), before)])
    for full, clipped in zip(*moves):
        torch.testing.assert_close(clipped, 0.25 * full, rtol=1e-4, atol=1e-8)


def _train(optimizer, model, batches):
    for batch in batches:
        kronecker_step(optimizer, model, batch)


def test_beta_zero_reproduces_kfac(num_threads):
    results = []
    for cls, extra in ((KFAC, {}), (FOP, {"beta_max": 0.0})):
        model = tiny_gpt2()
        optimizer = cls(param_groups(model, 0.1), model=model, lr=0.05, update_freq=2, **extra)
        torch.manual_seed(1)
        _train(optimizer, model, token_batches(3))
        results.append([p.detach().clone() for p in model.parameters()])
    start = [p.detach() for p in tiny_gpt2().parameters()]
    for kfac_p, fop_p in zip(*results):
        torch.testing.assert_close(fop_p, kfac_p, rtol=1e-5, atol=1e-6)
    assert max((p - p0).abs().max() for p, p0 in zip(results[0], start)) > 1e-3


def _fop_trainer(tmp_path, **overrides) -> FocoTrainer:
    args = FocoTrainingArguments(**common_args(tmp_path, optim="fop", learning_rate=0.05, **overrides))
    trainer = FocoTrainer(model=tiny_gpt2(), args=args, train_dataset=text_dataset(8))
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps  # set by the training loop
    return trainer


def test_half_batch_step_of_an_odd_micro_batch(tmp_path, monkeypatch):
    """Documented rule: halves of 1 and 2 examples, each loss weighted by its share, so p.grad is the exact
    full-batch gradient; the optimizer receives g1 − g2 of the halves' mean losses."""
    trainer = _fop_trainer(tmp_path)
    model, optimizer = trainer.model, unwrap_optimizer(trainer.optimizer)
    received = []
    monkeypatch.setattr(optimizer, "receive_half_batch_difference", received.append)
    ids = torch.randint(0, 32, (3, 8))
    trainer.training_step(model, {"input_ids": ids, "labels": ids})
    params = list(model.parameters())
    expected = torch.autograd.grad(model(input_ids=ids, labels=ids).loss, params)
    for p, g in zip(params, expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-7)
    half = optimizer.half_batch_params
    g1 = torch.autograd.grad(model(input_ids=ids[:1], labels=ids[:1]).loss, half)
    g2 = torch.autograd.grad(model(input_ids=ids[1:], labels=ids[1:]).loss, half)
    for diff, a, b in zip(received[0], g1, g2, strict=True):
        torch.testing.assert_close(diff, a - b, rtol=1e-4, atol=1e-7)


def test_half_batch_step_accumulates_micro_batches_like_one_large_batch(tmp_path, monkeypatch):
    """Two micro-batches of 4 give the halves {0,1 | 2,3} + {4,5 | 6,7}: one batch ordered 0,1,4,5,2,3,6,7.
    Same gradient, same half-batch difference, same step."""
    first, second = token_batches(2, seed=5)
    merged = {k: torch.cat([first[k][:2], second[k][:2], first[k][2:], second[k][2:]]) for k in first}
    monkeypatch.setattr(curvature, "_sample_rows", lambda weights, generator=None: weights.argmax(-1))
    results, differences = [], []
    for accumulation, micro_batches in ((1, [merged]), (2, [first, second])):
        trainer = _fop_trainer(tmp_path / str(accumulation), gradient_accumulation_steps=accumulation)
        model, optimizer = trainer.model, unwrap_optimizer(trainer.optimizer)
        optimizer.attach(model)
        optimizer.update_curvature(merged)  # the same factors for both
        trainer._curvature_step = trainer.state.global_step  # this step's curvature is done
        receive = optimizer.receive_half_batch_difference
        monkeypatch.setattr(optimizer, "receive_half_batch_difference",
                            lambda diffs, receive=receive: differences.append(diffs) or receive(diffs))
        for index, batch in enumerate(micro_batches):
            trainer.accelerator.gradient_state._set_sync_gradients(index == len(micro_batches) - 1)
            trainer.training_step(model, batch)
        optimizer.step()
        results.append([p.detach().clone() for p in model.parameters()])
    assert len(differences) == 2  # handed over once per optimizer step, at its last micro-batch
    for one, two in zip(*differences, strict=True):
        torch.testing.assert_close(two, one, rtol=1e-4, atol=1e-6)
    for one, two in zip(*results):
        torch.testing.assert_close(two, one, rtol=1e-5, atol=1e-6)
    assert max((p - q).abs().max() for p, q in zip(results[0], tiny_gpt2().parameters())) > 1e-3


def test_bad_input_is_refused_clearly(tmp_path, monkeypatch):
    trainer = _fop_trainer(tmp_path)
    ids = torch.randint(0, 32, (1, 8))
    with pytest.raises(ValueError, match="dataloader_drop_last"):
        trainer.training_step(trainer.model, {"input_ids": ids, "labels": ids})
    model = tiny_gpt2()
    optimizer = create_optimizer("fop", model)
    optimizer.update_curvature({"input_ids": ids})
    model(input_ids=ids, labels=ids).loss.backward()  # a plain loop: no half-batch difference
    with pytest.raises(RuntimeError, match="difference of two half-batch gradients"):
        optimizer.step()
    for env, word in (("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")):
        with monkeypatch.context() as patch:
            patch.setenv(env, "true")
            with pytest.raises(ValueError, match=word):
                create_optimizer("kfac", model)


def test_non_finite_steps_leave_the_optimizer_untouched():
    """What the stability guard relies on: without p.grad, step() changes nothing (and drops the difference
    it was handed); factors from a diverged model are discarded."""
    model = tiny_gpt2()
    optimizer = FOP(param_groups(model, 0.1), model=model, lr=0.05, update_freq=1)
    good, bad = token_batches(2, seed=3)
    _train(optimizer, model, [good])
    weights = [p.detach().clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in optimizer.state[optimizer.layers[0].weight].items()}
    model(**good).loss.backward()
    optimizer.receive_half_batch_difference([torch.ones_like(p) for p in optimizer.half_batch_params])
    for p in model.parameters():  # the guard found non-finite gradients and dropped them
        p.grad = None
    optimizer.step()
    for p, before in zip(model.parameters(), weights):
        assert torch.equal(p, before)
    assert all(torch.equal(v, optimizer.state[optimizer.layers[0].weight][k]) for k, v in state.items())
    model(**good).loss.backward()  # the next plain step must ask for a fresh difference
    with pytest.raises(RuntimeError, match="half-batch"):
        optimizer.step()
    factors = {k: optimizer.state[optimizer.layers[0].weight][k].clone() for k in ("A", "G_inv")}
    with torch.no_grad():
        model.transformer.wte.weight[bad["input_ids"][0, 0]] = float("nan")
    optimizer.update_curvature(bad)
    for key, value in factors.items():
        assert torch.equal(optimizer.state[optimizer.layers[0].weight][key], value)


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
