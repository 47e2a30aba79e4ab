"""K-FAC curvature for ``nn.Linear`` and transformers' ``Conv1D``: layer discovery, factors, damping, inverses.

For a layer with input rows a and output rows y, K-FAC approximates the Fisher block of its weight by
A ⊗ G with A = E[a aᵀ] and G = E[δ δᵀ], the expectation running over every row (tokens are flattened into
the batch: "K-FAC expand"). δ is the gradient of the *summed* loss with respect to the layer output, the
labels being sampled from the model's own predictive distribution: the true Fisher, not the empirical one.
The bias block is 1 ⊗ G (the bias sees a constant input 1), so a bias is preconditioned by G⁻¹ alone,
times the damped inverse of that scalar A factor, 1/(1 + √λ·π).

Layout. ``nn.Linear`` stores W as (out, in) and computes y = a·Wᵀ + b; the preconditioned gradient is
G⁻¹·∇W·A⁻¹ and F·v = G·V·A. transformers' ``Conv1D`` (GPT-2) stores W as (in, out) and computes
y = a·W + b; there the same matrices act from the other sides: A⁻¹·∇W·G⁻¹ and A·V·G.
:meth:`KFACLayer.kron_apply` is the one place that knows this.

Capture. Forward hooks record a layer's input and output only during :func:`sample_fisher_factors`'s own
forward pass; δ comes from ``torch.autograd.grad`` of the logits, seeded with the sampled-label loss's
gradient softmax − onehot, with respect to the recorded outputs, so parameter gradients (and DDP's
reduction hooks) are never touched. Gradient checkpointing would
recompute the forward inside the backward and fire the hooks twice; the curvature pass therefore switches
checkpointing off on every layer for its own forward (it then holds one batch of activations) and restores
it afterwards, so nothing is counted twice and the training passes stay checkpointed.

Precision. The curvature pass, the factor products, the damped inverses and the Kronecker products run under
:func:`fp32_matmul`: full fp32 matmuls whatever TF32 (or oneDNN's bf16) setting the caller chose.
"""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def fp32_matmul():
    """Run float32 matmuls in full fp32 inside the block (no TF32 on CUDA, no bf16 in oneDNN on CPU), then give
    back the caller's setting.

    It works on torch's per-backend settings (``torch.backends.cuda.matmul.fp32_precision``, the oneDNN one),
    which both of torch's interfaces end in: ``torch.set_float32_matmul_precision`` writes them, and
    ``torch.backends.fp32_precision`` (what transformers sets for ``--tf32`` on torch >= 2.9) is inherited by
    them. A backend that inherited its value inherits again afterwards."""
    backends = (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)
    saved = [backend.fp32_precision for backend in backends]
    for backend in backends:
        backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        for backend, value in zip(backends, saved):
            backend.fp32_precision = "none"
            if backend.fp32_precision != value:
                backend.fp32_precision = value


# The tied token embedding / lm_head (a vocabulary-wide factor: ~10 GB for GPT-2) and the embeddings stay
# with the first-order optimizer, as the FOP paper does for ViT. Patterns match full module names.
DEFAULT_EXCLUDE = ("*lm_head", "*wte", "*wpe", "*embed*")


@dataclass
class KFACLayer:
    """One preconditioned layer, found by module name."""

    name: str
    module: nn.Module
    weight: nn.Parameter
    bias: nn.Parameter | None
    transposed: bool = False  # transformers' Conv1D keeps its weight as (in, out)

    @property
    def in_features(self) -> int:
        return self.weight.shape[0] if self.transposed else self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[1] if self.transposed else self.weight.shape[0]

    def params(self) -> list[nn.Parameter]:
        return [self.weight] if self.bias is None else [self.weight, self.bias]

    @fp32_matmul()
    def kron_apply(self, tensors: Sequence[torch.Tensor], in_mat: torch.Tensor, out_mat: torch.Tensor,
                   bias_in: torch.Tensor | float = 1.0) -> list[torch.Tensor]:
        """(A-side ⊗ G-side)·v for v = (weight-shaped, [bias-shaped]) tensors, in fp32.

        ``in_mat`` acts on the input dimension (A, A⁻¹), ``out_mat`` on the output one (G, G⁻¹); both are
        symmetric. The bias's input is the constant 1, so its A-side is the scalar ``bias_in`` (1 for F,
        the damped 1/(1 + √λ·π) for F⁻¹).
        """
        w = tensors[0].float()
        result = [in_mat @ w @ out_mat if self.transposed else out_mat @ w @ in_mat]
        if len(tensors) > 1:
            result.append(bias_in * (out_mat @ tensors[1].float()))
        return result


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside (Distributed)DataParallel and ``torch.compile`` wrappers, whose names it keeps."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


def _tied_to_embedding(model: nn.Module) -> set[int]:
    return {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}


def find_layers(model: nn.Module, exclude: Iterable[str] = DEFAULT_EXCLUDE) -> list[KFACLayer]:
    """Every trainable ``nn.Linear`` / ``Conv1D`` of ``model`` in ``named_modules`` order.

    Skipped: module names matching an ``exclude`` pattern (fnmatch), and any layer whose weight is shared
    with an ``nn.Embedding`` (a tied lm_head, whatever its name).
    """
    from transformers.pytorch_utils import Conv1D  # here, so that ``import hf_foco`` stays light

    exclude = tuple(exclude)
    tied = _tied_to_embedding(model)
    layers = []
    for name, module in unwrap(model).named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)) or not module.weight.requires_grad:
            continue
        if id(module.weight) in tied or any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            continue
        bias = module.bias if module.bias is not None and module.bias.requires_grad else None
        layers.append(KFACLayer(name, module, module.weight, bias, transposed=isinstance(module, Conv1D)))
    return layers


@contextlib.contextmanager
def _checkpointing_disabled(model: nn.Module):
    """Switch transformers' per-layer ``gradient_checkpointing`` flags off, restoring them on exit."""
    switched = [m for m in model.modules() if getattr(m, "gradient_checkpointing", False) is True]
    for m in switched:
        m.gradient_checkpointing = False
    try:
        yield
    finally:
        for m in switched:
            m.gradient_checkpointing = True


class _Recorder:
    """Forward hooks that keep each layer's first (input, output) pair of one forward pass."""

    def __init__(self, layers: Sequence[KFACLayer]):
        self.records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.handles = [layer.module.register_forward_hook(self._hook(layer.name)) for layer in layers]

    def _hook(self, name):
        def hook(module, args, output):
            if name not in self.records and output.requires_grad:
                self.records[name] = (args[0].detach(), output)
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


def _logits(output) -> torch.Tensor:
    return output.logits if hasattr(output, "logits") else output


def _sample_rows(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One category per row, with probability proportional to ``weights``, by inverting the row's CDF.

    Same law as ``torch.multinomial(weights, 1)``, about 4x faster on CPU for a vocabulary-wide row.
    """
    cdf = weights.cumsum(-1)
    u = torch.rand(weights.shape[0], 1, generator=generator, device=weights.device, dtype=cdf.dtype) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(weights.shape[-1] - 1)


def causal_loss_mask(inputs: Mapping[str, object]) -> torch.Tensor | None:
    """1 where a causal LM's position carries loss: its *next* label is not -100 (the last never does).

    transformers' causal LMs shift internally: position t is scored against ``labels[t + 1]``. None when
    the batch has no token-level ``labels`` (then every position counts, ``attention_mask`` aside).
    """
    labels, ids = inputs.get("labels"), inputs.get("input_ids")
    if not (isinstance(labels, torch.Tensor) and isinstance(ids, torch.Tensor) and labels.shape == ids.shape):
        return None
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[..., :-1] = labels[..., 1:] != -100
    return mask


@fp32_matmul()
def sample_fisher_factors(model: nn.Module, layers: Sequence[KFACLayer], inputs: Mapping[str, object],
                          labels: torch.Tensor | None = None, generator: torch.Generator | None = None,
                          loss_mask: torch.Tensor | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Fresh factors (A, G) per layer name, in fp32, from one forward and one sampled-label backward.

    ``model(**inputs)`` must return logits (or an output with ``.logits``) whose last dimension is the
    class dimension. ``labels`` (same shape as the logits without their last dimension) replace the
    sampled ones (for tests); otherwise one label per position is drawn from softmax(logits). Positions
    where ``loss_mask`` (same shape as the labels; :func:`causal_loss_mask` for a causal LM) or
    ``inputs["attention_mask"]`` is 0 add no loss (their δ is 0) but their inputs still count in A, and G
    is averaged over the positions that carry loss.
    """
    inputs = {k: v for k, v in inputs.items() if k not in ("labels", "num_items_in_batch")}
    recorder = _Recorder(layers)
    try:
        with torch.enable_grad(), _checkpointing_disabled(model):
            logits = _logits(model(**inputs)).float()
    finally:
        recorder.remove()
    missing = [layer.name for layer in layers if layer.name not in recorder.records]
    if missing:
        raise RuntimeError(f"K-FAC layers {missing} took no part in the forward pass (or their outputs do not "
                           "require grad); exclude them with the optimizer's `exclude` patterns.")
    flat = logits.detach().reshape(-1, logits.shape[-1])
    with torch.no_grad():
        probs = F.softmax(flat, dim=-1)
        if labels is None:
            if not torch.isfinite(probs).all():
                # A diverged model: sample its non-finite rows uniformly; the factors come out non-finite
                # and the optimizer discards them (the stability guard handles the gradients).
                probs_ok = torch.isfinite(probs).all(-1, keepdim=True)
                labels = _sample_rows(torch.where(probs_ok, probs, torch.ones_like(probs)), generator)
            else:
                labels = _sample_rows(probs, generator)
        # ∂(summed cross-entropy)/∂logits = softmax − onehot(label), masked positions excluded.
        grad_logits = probs.index_put_((torch.arange(len(flat), device=flat.device), labels.reshape(-1).to(
            flat.device)), torch.tensor(-1.0, device=flat.device), accumulate=True)
        keep = torch.ones(len(flat), device=flat.device)
        for mask in (inputs.get("attention_mask"), loss_mask):
            if isinstance(mask, torch.Tensor) and mask.numel() == len(flat):
                keep = keep * mask.reshape(-1).to(device=flat.device, dtype=keep.dtype)
        grad_logits *= keep.reshape(-1, 1)
    outputs = [recorder.records[layer.name][1] for layer in layers]
    deltas = torch.autograd.grad(logits, outputs, grad_outputs=grad_logits.view_as(logits))
    factors = {}
    for layer, delta in zip(layers, deltas):
        a = recorder.records[layer.name][0].reshape(-1, layer.in_features).float()
        d = delta.reshape(-1, layer.out_features).float()
        factors[layer.name] = (a.T @ a / a.shape[0], d.T @ d / keep.sum().clamp_min(1))
    return factors


@fp32_matmul()
def damped_inverses(a: torch.Tensor, g: torch.Tensor, damping: float,
                    relative: bool = False) -> tuple[torch.Tensor, ...]:
    """Damped inverses of A and G and the bias's damped scalar A-side, in fp32.

    Relative (the optimizers' default): (A + √λ·ā·I)⁻¹, (G + √λ·ḡ·I)⁻¹ and 1/(1 + √λ), where ā = tr A / dim A
    and ḡ = tr G / dim G are the factors' mean eigenvalues: λ keeps its meaning while G's scale falls
    ~1000× in a GPT-2's first steps. (A ⊗ G's damping is then λ·ā·ḡ, λ times its mean eigenvalue.)

    Absolute: (A + √λ·π·I)⁻¹, (G + √λ/π·I)⁻¹ and 1/(1 + √λ·π) with π = sqrt(ā / ḡ), which splits λ between the
    factors so that neither is swamped when their scales differ. The bias's A factor is the scalar 1 (its
    input is constant), damped alike. Inverses through Cholesky in fp32: bf16 factors give broken
    decompositions.
    """
    a, g = a.float(), g.float()
    mean_a = a.diagonal().mean().clamp_min(1e-12)
    mean_g = g.diagonal().mean().clamp_min(1e-12)
    root = damping ** 0.5
    if relative:
        bias_inv = torch.tensor(1 / (1 + root), device=a.device)  # the bias's A is the scalar 1: ā = 1
        return _spd_inverse(a, root * mean_a), _spd_inverse(g, root * mean_g), bias_inv
    pi = torch.sqrt(mean_a / mean_g)
    return _spd_inverse(a, root * pi), _spd_inverse(g, root / pi), 1 / (1 + root * pi)


def _spd_inverse(mat: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(mat.shape[0], dtype=mat.dtype, device=mat.device)
    return torch.cholesky_inverse(torch.linalg.cholesky(mat + shift * eye))
