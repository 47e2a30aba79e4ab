"""MuonAdamW: torch's Muon on the hidden matrices (Conv1D transposed, GPT-2's Q, K, V apart), torch's AdamW on
everything else, as one optimizer the Trainer drives."""

from __future__ import annotations

import io

import pytest
import torch
from helpers import tiny_gpt2, token_batches

from hf_foco import cli
from hf_foco.optim import FOCUS, MuonAdamW, create_optimizer, get_optimizer

STEPS = 3
HIDDEN = {f"transformer.h.{i}.{name}.weight" for i in range(2)
          for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}


def _groups(optimizer) -> dict[str, set[str]]:
    names: dict[str, set[str]] = {}
    for group in optimizer.param_groups:
        names.setdefault(group["name"], set()).update(group["param_names"])
    return names


@pytest.mark.parametrize("tied", [True, False])
def test_muon_trains_the_hidden_matrices_and_adamw_the_rest(tied):
    """The authors' split: attention and MLP weights to Muon; embeddings, the LM head (tied or not),
    LayerNorms and biases to AdamW, each keeping the registry grouping's weight decay."""
    model = tiny_gpt2(tie_word_embeddings=tied)
    optimizer = create_optimizer("muon", model, weight_decay=0.1)
    names = _groups(optimizer)
    assert names["muon"] == HIDDEN
    assert names["adamw"] == {n for n, _ in model.named_parameters()} - HIDDEN
    assert ("lm_head.weight" in names["adamw"]) is not tied  # tied: it is the token embedding
    decay = {n: g["weight_decay"] for g in optimizer.param_groups for n in g["param_names"]}
    assert decay["transformer.h.0.attn.c_attn.weight"] == decay["transformer.wte.weight"] == 0.1
    assert decay["transformer.h.0.ln_1.weight"] == decay["transformer.h.0.attn.c_attn.bias"] == 0.0


def _random_grads(model, steps: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [{n: torch.randn(p.shape, generator=gen) for n, p in model.named_parameters()} for _ in range(steps)]


def _muon_references(model, qkv_whole: bool) -> dict[str, list[torch.nn.Parameter]]:
    """For each hidden weight, standalone (out, in) matrices holding copies of its values: the transpose of a
    Conv1D weight, c_attn cut into Q, K and V (unless ``qkv_whole``)."""
    matrices = {}
    for name, p in model.named_parameters():
        if name in HIDDEN:
            blocks = [p.detach().T] if qkv_whole or "c_attn" not in name else p.detach().T.chunk(3, dim=0)
            matrices[name] = [torch.nn.Parameter(b.clone()) for b in blocks]
    return matrices


@pytest.mark.parametrize("adjust_lr_fn, qkv_whole", [("match_rms_adamw", False), ("original", True)],
                         ids=["match_rms-qkv_apart", "original-qkv_whole"])
def test_each_part_equals_torchs_optimizer_on_its_parameters(adjust_lr_fn, qkv_whole):
    """Three steps on the same gradients: every hidden matrix (each of Q, K, V apart, or c_attn whole) equals
    torch.optim.Muon run on its (out, in) copy, every other parameter torch.optim.AdamW run on its copy."""
    model = tiny_gpt2()
    settings = dict(lr=2e-2, weight_decay=0.1, momentum=0.9)
    optimizer = MuonAdamW(list(model.parameters()), model=model, **settings, adjust_lr_fn=adjust_lr_fn,
                          adamw_lr=1e-3, qkv_layers=() if qkv_whole else ("*c_attn",))
    matrices = _muon_references(model, qkv_whole)
    muon = torch.optim.Muon([m for blocks in matrices.values() for m in blocks], **settings,
                            adjust_lr_fn=adjust_lr_fn)
    others = {n: torch.nn.Parameter(p.detach().clone()) for n, p in model.named_parameters() if n not in HIDDEN}
    adamw = torch.optim.AdamW(others.values(), lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), eps=1e-8)
    for grads in _random_grads(model, STEPS):
        for name, p in model.named_parameters():
            p.grad = grads[name].clone()
            if name in HIDDEN:
                blocks = [grads[name].T] if qkv_whole or "c_attn" not in name else grads[name].T.chunk(3, dim=0)
                for matrix, block in zip(matrices[name], blocks):
                    matrix.grad = block.clone()
            else:
                others[name].grad = grads[name].clone()
        optimizer.step()
        muon.step()
        adamw.step()
    for name, p in model.named_parameters():
        if name in HIDDEN:
            assert torch.equal(p.detach().T, torch.cat([m.detach() for m in matrices[name]])), name
        else:
            assert torch.equal(p.detach(), others[name].detach()), name


def _loss_step(model, optimizer, batch):
    model.zero_grad()
    model(**batch).loss.backward()
    optimizer.step()


def test_resume_from_a_state_dict_is_exact_and_the_state_lazy():
    batches = token_batches(6)
    model = tiny_gpt2()
    optimizer = create_optimizer("muon", model, lr=1e-2)
    assert not optimizer.state
    for batch in batches:
        _loss_step(model, optimizer, batch)

    half = tiny_gpt2()
    half_opt = create_optimizer("muon", half, lr=1e-2)
    for batch in batches[:3]:
        _loss_step(half, half_opt, batch)
    buffer = io.BytesIO()
    torch.save({"model": half.state_dict(), "optimizer": half_opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    resumed = tiny_gpt2(seed=1)
    resumed_opt = create_optimizer("muon", resumed, lr=1e-2)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    for batch in batches[3:]:
        _loss_step(resumed, resumed_opt, batch)
    for (name, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), name


def test_another_optimizers_state_is_refused():
    model = tiny_gpt2()
    other = FOCUS(model.parameters(), lr=1e-3)
    _loss_step(model, other, token_batches(1)[0])
    with pytest.raises(ValueError, match="saved by another optimizer .* not by MuonAdamW"):
        create_optimizer("muon", model).load_state_dict(other.state_dict())


def test_bad_settings_name_the_fix():
    model = tiny_gpt2()
    with pytest.raises(ValueError, match="adjust_lr_fn='original'\\) needs an explicit adamw_lr"):
        MuonAdamW(model.parameters(), model=model, adjust_lr_fn="original")
    with pytest.raises(ValueError, match="Invalid adjust_lr_fn='rms'"):
        MuonAdamW(model.parameters(), model=model, adjust_lr_fn="rms")
    with pytest.raises(ValueError, match="'transformer.h.0.mlp.c_fc' matches qkv_layers"):
        MuonAdamW(model.parameters(), model=model, qkv_layers=("*c_fc",))  # 128 outputs are not 3 stacked
    with pytest.raises(TypeError, match="pass the model"):
        create_optimizer("muon", model.parameters())


def test_the_registry_and_the_command_line_know_it(capsys):
    spec = get_optimizer("muon")
    assert spec.cls is MuonAdamW and not spec.supports_sharded_params
    assert spec.defaults["lr"] == 6e-4 and "match_rms" in spec.defaults_from
    assert cli.main(["optimizers"]) == 0
    assert "muon     hf_foco.optim.muon.MuonAdamW  state: 4 B/param (momentum)" in capsys.readouterr().out
    from hf_foco.trainer import FocoTrainingArguments

    args = FocoTrainingArguments("unused", optim="muon", learning_rate=2e-3, report_to="none")
    assert args.optimizer_kwargs()["lr"] == 2e-3 and args.optimizer_kwargs()["betas"] == (0.9, 0.95)
