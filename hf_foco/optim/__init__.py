"""hf_foco's optimizers and the registry that names them.

Each elementwise optimizer is a thin class over a public functional rule in its module
(:func:`.focus.focus`, :func:`.foco.foco`, :func:`.signum.signum`, :func:`.lion.lion`, like
``torch.optim.adamw.adamw``); K-FAC and FOP live in :mod:`.kfac`. The records below are the
built-in entries of the registry (:mod:`.registry`).
"""

from .adamw import AdamW
from .foco import FOCUS16bit
from .focus import FOCUS
from .grouping import DECAY_POLICIES, param_groups
from .kfac import FOP, KFAC
from .lion import Lion
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

register_optimizer(
    "foco", FOCUS16bit, defaults=dict(lr=6e-4, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.2),
    paper="FOCUS rule (Liu, Liu & Gore 2025), hf_foco engineering", state_bytes_per_param=4,
    description="FOCUS at half of AdamW's optimizer memory; the default choice for noisy large-LR pretraining.",
)
register_optimizer(
    "focus", FOCUS, defaults=dict(lr=6e-4, betas=(0.9, 0.99), gamma=0.2, weight_decay=0.2),
    paper="Liu, Liu & Gore 2025, arXiv:2501.12243", state_bytes_per_param=8,
    description="Reference FOCUS (fp32 state); use to reproduce the paper exactly.",
)
register_optimizer(
    "signum", Signum, defaults=dict(lr=1e-4, momentum=0.9, weight_decay=0.1),
    paper="Bernstein et al. 2018, arXiv:1802.04434", state_bytes_per_param=4,
    description="Sign of momentum; the gamma = 0 ablation of FOCUS.",
)
register_optimizer(
    "lion", Lion, defaults=dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.5),
    paper="Chen et al. 2023, arXiv:2302.06675", state_bytes_per_param=4,
    description="Sign of interpolated momentum; wants a 3-10x smaller LR and larger decay than AdamW.",
)
register_optimizer(
    "adamw", AdamW, defaults=dict(lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1),
    paper="Loshchilov & Hutter 2019, arXiv:1711.05101 (torch.optim.AdamW)", state_bytes_per_param=8,
    description="The baseline: torch's AdamW with nanoGPT's GPT-2 hyperparameters.",
)
register_optimizer(
    "fop", FOP, defaults=dict(lr=2e-3, momentum=0.9, weight_decay=0.1, damping=0.1),
    paper="Lu & Armour, AAAI-26, arXiv:2508.13898 (hf_foco: first language-model implementation)",
    state_bytes_per_param=None, needs_layer_hooks=True, needs_half_batch_grads=True, supports_sharded_params=False,
    description="K-FAC plus the Fisher-orthogonal half-batch difference; for very large batches (DDP only).",
)
register_optimizer(
    "kfac", KFAC, defaults=dict(lr=2e-3, momentum=0.9, weight_decay=0.1, damping=0.1),
    paper="Martens & Grosse 2015, arXiv:1503.05671 (sampled-label Fisher, as FOP uses it)",
    state_bytes_per_param=None, needs_layer_hooks=True, supports_sharded_params=False,
    description="K-FAC on Linear/Conv1D layers, AdamW elsewhere; the beta*=0 ablation of FOP (DDP only).",
)

__all__ = [
    "DECAY_POLICIES", "ENTRY_POINT_GROUP", "FOCUS", "FOCUS16bit", "FOP", "HalfBatchOptimizer", "KFAC",
    "LayerHookOptimizer", "Lion", "OptimizerSpec", "RegisteredNames", "Signum", "create_optimizer", "get_optimizer",
    "is_registered", "list_optimizers", "param_groups", "register_optimizer", "spec_of",
]
