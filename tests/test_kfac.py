"""K-FAC curvature: factors against per-sample brute force, the true (sampled) Fisher, Conv1D layout."""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from helpers import Classifier, half_batch_difference, kronecker_step, tiny_gpt2, token_batches
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.pytorch_utils import Conv1D

from hf_foco.optim import FOP, KFAC, create_optimizer, param_groups
from hf_foco.optim.kfac import damped_inverses, find_layers, sample_fisher_factors


def _outer_mean(rows: torch.Tensor) -> torch.Tensor:
    """(1/N) Σ_n r_n r_nᵀ, one sample at a time."""
    total = torch.zeros(rows.shape[1], rows.shape[1], dtype=torch.float64)
    for row in rows.double():
        total += torch.outer(row, row)
    return total / rows.shape[0]


def _assert_factor_close(got: torch.Tensor, exact: torch.Tensor, rows: int, width: int) -> None:
    """An fp32 factor (1/N) Σ r rᵀ against its float64 value, entry by entry, within the rounding of fp32.

    Each entry is an inner product of N = ``rows`` terms: its accumulation error is at most γ_N Σ|r_i r_j| / N
    ≤ N·u·√(F_ii F_jj) (Cauchy-Schwarz), u = 2⁻²⁴. The rows themselves come from a forward and backward whose
    longest reduction has ``width`` terms, each row entry within ~width·u of its size: 2·width·u more. So
    |ΔF_ij| ≤ (N + 2·width)·u·√(F_ii F_jj), whatever order a CPU or thread count accumulates in. (An entry far
    below its row's scale may lose all its digits to cancellation; a wrong row, layout or scale is off by O(1).)
    """
    scale = exact.diagonal().clamp_min(0).sqrt()
    bound = (rows + 2 * width) * 2.0 ** -24 * torch.outer(scale, scale)
    error = (got.double() - exact).abs()
    assert (error <= bound).all(), f"worst error / bound: {(error / bound).max():.2f}"


def test_mlp_factors_equal_per_sample_expectations(num_threads):
    torch.manual_seed(0)
    model = Classifier(nn.Linear)
    x, labels = torch.randn(6, 5), torch.randint(0, 4, (6,))
    factors = sample_fisher_factors(model, find_layers(model), {"x": x}, labels=labels)

    # Brute force: one sample at a time, δ of a layer is the gradient of that sample's loss w.r.t. its bias.
    acts, deltas = {"layer1": [], "layer2": []}, {"layer1": [], "layer2": []}
    for n in range(6):
        model.zero_grad()
        hidden = torch.tanh(model.layer1(x[n:n + 1]))
        F.cross_entropy(model.layer2(hidden), labels[n:n + 1], reduction="sum").backward()
        acts["layer1"].append(x[n])
        acts["layer2"].append(hidden[0].detach())
        for name in deltas:
            deltas[name].append(getattr(model, name).bias.grad.clone())
    for name in ("layer1", "layer2"):
        a, g = factors[name]
        _assert_factor_close(a, _outer_mean(torch.stack(acts[name])), rows=6, width=7)
        _assert_factor_close(g, _outer_mean(torch.stack(deltas[name])), rows=6, width=7)


def test_sampled_labels_give_the_true_fisher_not_the_empirical_one():
    torch.manual_seed(1)
    model = Classifier(nn.Linear)
    with torch.no_grad():
        model.layer2.weight.mul_(5)  # confident, non-uniform predictions
    x = torch.randn(4000, 5)
    _, g = sample_fisher_factors(model, find_layers(model), {"x": x})["layer2"]
    # For the logits layer δ = p − onehot(y); with y ~ p its expectation is diag(p) − p pᵀ.
    with torch.no_grad():
        p = F.softmax(model(x).logits, dim=-1).double()
    exact = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    torch.testing.assert_close(g.double(), exact, rtol=0, atol=0.01)


class _Probe:
    """Forward hooks that add a zero probe z to each layer output and keep the input: ∂loss/∂z is δ."""

    def __init__(self, layers):
        self.inputs, self.probes = {}, {}
        self.handles = [layer.module.register_forward_hook(self._hook(layer.name)) for layer in layers]

    def _hook(self, name):
        def hook(module, args, output):
            self.inputs[name] = args[0].detach()
            self.probes[name] = torch.zeros_like(output, requires_grad=True)
            return output + self.probes[name]
        return hook


def test_gpt2_block_factors_equal_per_row_brute_force(num_threads):
    model = tiny_gpt2(n_layer=1, n_embd=16, vocab_size=32)
    layers = find_layers(model)
    assert [layer.name for layer in layers] == [
        "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj"]  # lm_head (tied to wte) and the embeddings are left to AdamW
    ids = torch.randint(0, 32, (2, 6))
    labels = torch.randint(0, 32, (2, 6))
    factors = sample_fisher_factors(model, layers, {"input_ids": ids}, labels=labels)

    # The brute force runs on a float64 copy: its rows are exact to fp32's eyes.
    reference = copy.deepcopy(model).double()
    probe = _Probe(find_layers(reference))
    logits = reference(input_ids=ids).logits
    F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), reduction="sum").backward()
    for layer in layers:
        a, g = factors[layer.name]
        rows_in = probe.inputs[layer.name].reshape(12, -1)
        rows_delta = probe.probes[layer.name].grad.reshape(12, -1)
        # longest reduction in the forward and backward: the MLP's 4 x 16 hidden units
        _assert_factor_close(a, _outer_mean(rows_in), rows=12, width=64)
        _assert_factor_close(g, _outer_mean(rows_delta), rows=12, width=64)


@pytest.mark.parametrize("reentrant", [False, True])
def test_gradient_checkpointing_is_not_counted_twice(reentrant):
    ids, labels = torch.randint(0, 32, (2, 6)), torch.randint(0, 32, (2, 6))
    plain = tiny_gpt2(n_layer=2)
    expected = sample_fisher_factors(plain, find_layers(plain), {"input_ids": ids}, labels=labels)
    checkpointed = tiny_gpt2(n_layer=2)
    checkpointed.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": reentrant})
    checkpointed.train()
    got = sample_fisher_factors(checkpointed, find_layers(checkpointed), {"input_ids": ids}, labels=labels)
    for name, (a, g) in expected.items():
        torch.testing.assert_close(got[name][0], a)
        torch.testing.assert_close(got[name][1], g)
    assert all(block.gradient_checkpointing for block in checkpointed.transformer.h)  # restored


def test_exclude_patterns_are_configurable():
    model = tiny_gpt2(n_layer=1)
    names = [layer.name for layer in find_layers(model, exclude=("*lm_head", "*wte", "*wpe", "*.mlp.*"))]
    assert names == ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj"]


def test_damped_inverses_split_the_damping_by_the_trace_ratio(num_threads):
    torch.manual_seed(0)
    xa, xg = torch.randn(20, 3), 0.01 * torch.randn(20, 2)
    a, g = xa.T @ xa / 20, xg.T @ xg / 20
    a_inv, g_inv, bias_inv = damped_inverses(a, g, damping=1e-2)
    pi = ((a.trace() / 3) / (g.trace() / 2)).sqrt()
    torch.testing.assert_close(bias_inv, 1 / (1 + 0.1 * pi))
    torch.testing.assert_close(a_inv, torch.linalg.inv(a + 0.1 * pi * torch.eye(3)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(g_inv, torch.linalg.inv(g + 0.1 / pi * torch.eye(2)), rtol=1e-4, atol=1e-3)


def _as_linear(conv_model: Classifier) -> Classifier:
    model = Classifier(nn.Linear)
    with torch.no_grad():
        for name in ("layer1", "layer2"):
            getattr(model, name).weight.copy_(getattr(conv_model, name).weight.T)
            getattr(model, name).bias.copy_(getattr(conv_model, name).bias)
    return model


@pytest.mark.parametrize("cls", [KFAC, FOP])
def test_conv1d_and_linear_give_the_same_update(cls, num_threads):
    torch.manual_seed(0)
    conv = Classifier(lambda n_in, n_out: Conv1D(n_out, n_in))
    with torch.no_grad():
        for p in conv.parameters():
            p.normal_()
    linear = _as_linear(conv)
    start = linear.layer1.weight.detach().clone()
    x, labels = torch.randn(8, 5), torch.randint(0, 4, (8,))
    for model in (conv, linear):
        optimizer = cls(model.parameters(), model=model, lr=0.1, damping=1e-3, momentum=0.5)
        torch.manual_seed(3)  # the same sampled labels for both
        for _ in range(2):
            kronecker_step(optimizer, model, {"x": x, "labels": labels})
    for name in ("layer1", "layer2"):
        torch.testing.assert_close(getattr(conv, name).weight.T, getattr(linear, name).weight, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(getattr(conv, name).bias, getattr(linear, name).bias, rtol=1e-4, atol=1e-5)
    assert (linear.layer1.weight - start).abs().max() > 1e-2  # the update is not trivially zero


def test_bad_settings_fail_at_construction():
    model = tiny_gpt2()
    with pytest.raises(ValueError, match="damping"):
        create_optimizer("kfac", model, damping=0.0)
    with pytest.raises(ValueError, match="update_freq"):
        create_optimizer("kfac", model, update_freq=0)
    with pytest.raises(ValueError, match="no nn.Linear / Conv1D"):
        create_optimizer("kfac", model, exclude=("*",))
    with pytest.raises(TypeError, match="pass the model"):
        create_optimizer("kfac", list(model.parameters()))


# -- precision: K-FAC's arithmetic in full fp32 whatever TF32 says --------------------------------------

MATMULS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm, torch.ops.aten.mv,
           torch.ops.aten.addmv}


def _matmul_setting() -> tuple[str, str]:
    """The fp32 matmul precision in force for cuBLAS and oneDNN ("ieee": full fp32). torch's global getter
    cannot say it: it refuses to answer, or answers the global value, once per-backend values were set."""
    return torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision


class _MatmulSettings(TorchDispatchMode):
    """Records the fp32 matmul setting in force at every matrix product."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in MATMULS:
            self.seen.append(_matmul_setting())
        return func(*args, **(kwargs or {}))


def _train_kronecker(cls, record: _MatmulSettings | None = None):
    """Two steps of ``cls`` on the tiny GPT-2, the K-FAC arithmetic (curvature, step) inside ``record``;
    returns the factors and parameters."""
    model = tiny_gpt2()
    optimizer = cls(param_groups(model, 0.1), model=model, lr=1e-2)
    inside = record if record is not None else contextlib.nullcontext()
    for batch in token_batches(2):
        with inside:
            optimizer.update_curvature(batch)
        model.zero_grad()
        model(**batch).loss.backward()
        if cls is FOP:
            optimizer.receive_half_batch_difference(half_batch_difference(model, optimizer.half_batch_params, batch))
        with inside:
            optimizer.step()
    factors = [optimizer.state[layer.weight][k] for layer in optimizer.layers for k in ("A", "G", "A_inv", "G_inv")]
    return factors + [p.detach() for p in model.parameters()]


def _reset_matmul_settings():
    """torch's start-up state: nothing set anywhere (full fp32), every backend inheriting the global value."""
    for backend in (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul, torch.backends):
        backend.fp32_precision = "none"


@pytest.fixture
def fresh_matmul_settings():
    _reset_matmul_settings()
    yield
    _reset_matmul_settings()


@pytest.mark.parametrize("cls, request_tf32", [(KFAC, "high"), (KFAC, "medium"), (KFAC, "transformers"),
                                               (FOP, "transformers")])
def test_factors_and_updates_are_fp32_whatever_tf32_says(cls, request_tf32, fresh_matmul_settings):
    """TF32 (or oneDNN bf16) asked for the way callers do (torch's global setting, or transformers' per-backend
    one for --tf32, and bf16 with torch_compile, on torch >= 2.9): every matrix product of the curvature pass,
    the factors, inverses and Kronecker products still runs at full fp32, the caller's setting is back after
    each call, and factors and parameters equal those of a run with nothing requested."""
    reference = _train_kronecker(cls)
    if request_tf32 == "transformers":
        torch.backends.fp32_precision = "tf32"
    else:
        torch.set_float32_matmul_precision(request_tf32)
    requested = _matmul_setting()
    record = _MatmulSettings()
    got = _train_kronecker(cls, record)
    assert record.seen and set(record.seen) == {("ieee", "ieee")}
    assert _matmul_setting() == requested != ("ieee", "ieee")
    if request_tf32 != "transformers":
        assert torch.get_float32_matmul_precision() == request_tf32  # the caller's interface still answers
    for a, b in zip(got, reference):
        assert torch.equal(a, b)
