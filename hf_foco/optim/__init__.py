"""hf_foco's optimizers and the registry that names them.

Each elementwise optimizer is a thin class over a public functional rule in its module
(:func:`.focus.focus`, :func:`.foco.foco`, :func:`.signum.signum`, :func:`.lion.lion`, like
``torch.optim.adamw.adamw``), stepped by the implementation :mod:`.dispatch` picks; K-FAC and FOP live in
:mod:`.kfac`, Muon with AdamW in :mod:`.muon`. The records below are the built-in entries of the registry
(:mod:`.registry`).
"""

from .adamw import AdamW
from .foco import FOCUS16bit
from .focus import FOCUS
from .grouping import DECAY_POLICIES, param_groups
from .kfac import FOP, KFAC
from .lion import Lion
from .muon import MuonAdamW
from .registry import (
    ENTRY_POINT_GROUP,
    HalfBatchOptimizer,
    LayerHookOptimizer,
    OptimizerSpec,
    RegisteredNames,
    create_optimizer,
    get_optimizer,
    is_registered,
    list_optimizers,
    register_optimizer,
    spec_of,
)
from .signum import Signum

# Where each record's defaults come from (settings measured at other scales live in the recipes, which say so).
_FOCUS_GPT2 = "the FOCUS paper's GPT-2 small setting (Liu, Liu & Gore 2025)"
_NANOGPT_GPT2 = "nanoGPT's GPT-2 small AdamW setting"
_KRONECKER_STATE = "Kronecker factors (per layer, not per parameter)"

register_optimizer(
    "foco", FOCUS16bit, defaults=dict(lr=6e-4, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.2),
    defaults_from=_FOCUS_GPT2, paper="FOCUS rule (Liu, Liu & Gore 2025), hf_foco engineering", state_bytes_per_param=4,
    description="FOCUS in 4 bytes of optimizer state per parameter, half of AdamW's.",
)
register_optimizer(
    "focus", FOCUS, defaults=dict(lr=6e-4, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.2),
    defaults_from=_FOCUS_GPT2, paper="Liu, Liu & Gore 2025, arXiv:2501.12243", state_bytes_per_param=8,
    description="Reference FOCUS (fp32 state); use to reproduce the paper exactly.",
)
register_optimizer(
    "signum", Signum, defaults=dict(lr=5e-5, momentum=0.9, weight_decay=0.1),
    defaults_from="the FOCUS paper's GPT-2 small Signum baseline (FOCUS with gamma 0: momentum 0.9) at lr 5e-5, half "
                  "the lowest lr at which the paper saw it diverge (1e-4); decay nanoGPT's 0.1",
    paper="Bernstein et al. 2018, arXiv:1802.04434", state_bytes_per_param=4,
    description="Sign of momentum; the gamma = 0 ablation of FOCUS.",
)
register_optimizer(
    "lion", Lion, defaults=dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.5),
    defaults_from="the Lion paper's betas (0.9, 0.99); lr nanoGPT's GPT-2 AdamW lr / 6 (Lion wants a 3-10x smaller "
                  "one), decay 0.5 (tuned Lion's 0.5-0.7 in Wen et al. 2025)",
    paper="Chen et al. 2023, arXiv:2302.06675", state_bytes_per_param=4,
    description="Sign of interpolated momentum; wants a 3-10x smaller LR and larger decay than AdamW.",
)
register_optimizer(
    "adamw", AdamW, defaults=dict(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1),
    defaults_from=_NANOGPT_GPT2,
    paper="Loshchilov & Hutter 2019, arXiv:1711.05101 (torch.optim.AdamW)", state_bytes_per_param=8,
    description="The baseline: torch's AdamW.",
)
_KFAC_DEFAULTS = dict(lr=6e-4, momentum=0.9, weight_decay=0.1, damping=0.1)
_KFAC_FROM = (f"{_NANOGPT_GPT2}, which its RMS-normalised step shares with its AdamW part; damping relative 0.1 "
             "(untuned at GPT-2 scale)")
register_optimizer(
    "fop", FOP, defaults=_KFAC_DEFAULTS, defaults_from=_KFAC_FROM,
    paper="Lu & Armour, AAAI-26, arXiv:2508.13898 (hf_foco: first language-model implementation)",
    state_bytes_per_param=None, state=_KRONECKER_STATE, needs_layer_hooks=True, needs_half_batch_grads=True,
    supports_sharded_params=False,
    description="K-FAC plus the Fisher-orthogonal half-batch difference; for very large batches (DDP only).",
)
register_optimizer(
    "kfac", KFAC, defaults=_KFAC_DEFAULTS, defaults_from=_KFAC_FROM,
    paper="Martens & Grosse 2015, arXiv:1503.05671 (sampled-label Fisher, as FOP uses it)",
    state_bytes_per_param=None, state=_KRONECKER_STATE, needs_layer_hooks=True, supports_sharded_params=False,
    description="K-FAC on Linear/Conv1D layers, AdamW elsewhere; the beta*=0 ablation of FOP (DDP only).",
)
register_optimizer(
    "muon", MuonAdamW, defaults=dict(lr=6e-4, weight_decay=0.1, momentum=0.95, betas=(0.9, 0.95)),
    defaults_from=f"{_NANOGPT_GPT2} for both parts, carried to Muon by Moonshot's RMS matching (adjust_lr_fn="
                  "'match_rms_adamw'); Muon's momentum 0.95, Nesterov, 5 Newton-Schulz steps (torch's)",
    paper="Jordan et al. 2024 (torch.optim.Muon); Liu et al. 2025, arXiv:2502.16982 (AdamW-matched scale)",
    state_bytes_per_param=None, state="4 B/param (momentum) on the hidden matrices, 8 (AdamW) on the rest",
    supports_sharded_params=False,
    description="Muon on the attention and MLP matrices, AdamW on embeddings, head, LayerNorms and biases (DDP only).",
)

__all__ = [
    "DECAY_POLICIES", "ENTRY_POINT_GROUP", "FOCUS", "FOCUS16bit", "FOP", "HalfBatchOptimizer", "KFAC",
    "LayerHookOptimizer", "Lion", "MuonAdamW", "OptimizerSpec", "RegisteredNames", "Signum", "create_optimizer", "get_optimizer",
    "is_registered", "list_optimizers", "param_groups", "register_optimizer", "spec_of",
]
