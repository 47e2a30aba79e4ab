"""StabilityCallback: non-finite updates are skipped and counted; N in a row stop training with the last
checkpoint intact; loss spikes and the update ratio are logged."""

import json
import math

import pytest
import torch
from helpers import common_args, text_dataset, tiny_gpt2
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainerControl, TrainerState

from hf_foco.spikes import spike_indices
from hf_foco.trainer import (
    FocoTrainer,
    FocoTrainingArguments,
    StabilityCallback,
    TrainingDivergedError,
    unwrap_optimizer,
)

torch.set_num_threads(1)


class Snapshots(TrainerCallback):
    def __init__(self):
        self.params = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.params[state.global_step] = {k: v.detach().clone() for k, v in model.state_dict().items()}


def poisoned_trainer(tmp_path, bad_steps, **overrides):
    """A foco run whose gradients turn NaN during the optimizer steps listed in ``bad_steps``."""
    settings = {"optim": "foco", "learning_rate": 3e-3, "max_steps": 6, "gradient_accumulation_steps": 2,
                "per_device_train_batch_size": 4, **overrides}
    args = FocoTrainingArguments(**common_args(tmp_path, **settings))
    snapshots = Snapshots()
    trainer = FocoTrainer(model=tiny_gpt2(), args=args, train_dataset=text_dataset(48), callbacks=[snapshots])
    weight = trainer.model.transformer.h[0].attn.c_attn.weight
    weight.register_hook(lambda g: g * float("nan") if trainer.state.global_step + 1 in bad_steps else g)
    return trainer, snapshots


def equal(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_step_is_skipped_counted_and_leaves_optimizer_state_alone(tmp_path):
    trainer, snap = poisoned_trainer(tmp_path, bad_steps={3}, max_bad_steps=2)
    trainer.train()
    assert equal(snap.params[3], snap.params[2])  # the update of step 3 was skipped
    assert not equal(snap.params[4], snap.params[3])  # and training went on
    opt = unwrap_optimizer(trainer.optimizer)
    assert {int(s["step"].item()) for s in opt.state.values()} == {5}  # 6 steps, one without any update
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    summary = json.loads((tmp_path / "stability.json").read_text())
    assert summary["skipped_steps"] == [3] and summary["status"] == "ok"
    logged = {e["step"]: e["skipped_steps"] for e in trainer.state.log_history if "skipped_steps" in e}
    assert logged[2] == 0 and logged[3] == 1 and logged[6] == 1
    assert trainer.state.log_history[-1]["stability"] == summary


def test_a_half_batch_optimizer_skips_a_non_finite_step_too(tmp_path):
    """FOP is handed g1 − g2 besides p.grad; with p.grad dropped by the guard its step must still be a no-op."""
    trainer, snap = poisoned_trainer(tmp_path, bad_steps={2, 4}, optim="fop", learning_rate=0.05)
    trainer.train()
    assert equal(snap.params[2], snap.params[1]) and equal(snap.params[4], snap.params[3])
    assert not equal(snap.params[3], snap.params[2]) and not equal(snap.params[6], snap.params[5])
    assert trainer.stability.skipped_steps == [2, 4]


def test_consecutive_non_finite_steps_stop_training_with_the_checkpoint_intact(tmp_path):
    trainer, snap = poisoned_trainer(tmp_path, bad_steps={4, 5, 6}, max_bad_steps=3, save_strategy="steps",
                                     save_steps=3)
    with pytest.raises(TrainingDivergedError, match="3 consecutive steps had non-finite gradients"):
        trainer.train()
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-3"]
    saved = load_file(tmp_path / "checkpoint-3" / "model.safetensors")
    assert all(torch.equal(saved[k], snap.params[3][k]) for k in saved)
    assert equal(trainer.model.state_dict(), snap.params[3])  # no update after the last good step
    summary = json.loads((tmp_path / "stability.json").read_text())
    assert summary["status"] == "diverged" and summary["skipped_steps"] == [4, 5, 6]


def _log(monitor, state, loss):
    state.global_step += 1
    state.log_history.append({"loss": loss, "step": state.global_step})
    logs = {"loss": loss}
    monitor.on_log(None, state, TrainerControl(), logs=logs)
    return logs


def test_loss_spike_is_a_large_z_score_over_the_trailing_window():
    monitor, state = StabilityCallback(spike_window=8, spike_zscore=4.0), TrainerState()
    history = [3.0, 3.1, 2.9, 3.05, 2.95, 3.0, 3.1, 2.9]
    for loss in history:
        _log(monitor, state, loss)
    mean = sum(history) / 8
    std = (sum((x - mean) ** 2 for x in history) / 7) ** 0.5
    logs = _log(monitor, state, 3.5)
    assert logs["loss_zscore"] == pytest.approx((3.5 - mean) / std)
    assert state.log_history[-1]["loss_zscore"] == logs["loss_zscore"]
    assert monitor.spikes == [{"step": 9, "loss": 3.5, "zscore": logs["loss_zscore"]}]
    assert _log(monitor, state, 3.02)["loss_zscore"] < 4.0  # the spike stayed out of the window
    assert len(monitor.spikes) == 1


def test_update_ratio_matches_the_parameter_change_of_a_logging_step(tmp_path):
    args = FocoTrainingArguments(**common_args(tmp_path, optim="signum", learning_rate=1e-3, max_steps=2,
                                               weight_decay=0.0, optim_args="momentum=0", logging_steps=2))
    snap = Snapshots()
    trainer = FocoTrainer(model=tiny_gpt2(), args=args, train_dataset=text_dataset(16), callbacks=[snap])
    trainer.train()
    before, after = snap.params[1], snap.params[2]
    names = [n for n, _ in trainer.model.named_parameters()]  # the tied lm_head counted once
    delta = torch.cat([(after[n] - before[n]).flatten() for n in names]).norm()
    weight = torch.cat([before[n].flatten() for n in names]).norm()
    ratio = next(e["update_ratio"] for e in trainer.state.log_history if "update_ratio" in e)
    assert ratio == pytest.approx((delta / weight).item(), rel=1e-4)
    # signum without momentum or decay moves every coordinate by exactly lr (times the LR schedule)
    lr = next(e["learning_rate"] for e in trainer.state.log_history if e.get("step") == 2)
    count = sum(p.numel() for p in trainer.model.parameters())
    assert delta.item() == pytest.approx(lr * count ** 0.5, rel=1e-3)


def test_update_rms_and_ratio_per_group_match_the_parameter_change(tmp_path):
    """FOP: K-FAC layers and AdamW parameters are separate groups; each gets its own update RMS and ratio,
    and FOP's β*/η* are logged on the same step."""
    args = FocoTrainingArguments(**common_args(tmp_path, optim="fop", learning_rate=1e-2, max_steps=2,
                                               logging_steps=2))
    snap = Snapshots()
    trainer = FocoTrainer(model=tiny_gpt2(), args=args, train_dataset=text_dataset(16), callbacks=[snap])
    trainer.train()
    before, after = snap.params[1], snap.params[2]
    entry = next(e for e in trainer.state.log_history if "update_ratio" in e)
    name_of = {id(p): g["name"] for g in unwrap_optimizer(trainer.optimizer).param_groups for p in g["params"]}
    for group in ("kfac", "adamw"):
        names = [n for n, p in trainer.model.named_parameters() if name_of[id(p)] == group]
        delta = torch.cat([(after[n] - before[n]).flatten() for n in names])
        weight = torch.cat([before[n].flatten() for n in names]).norm()
        assert entry[f"update_rms/{group}"] == pytest.approx(delta.pow(2).mean().sqrt().item(), rel=1e-4)
        assert entry[f"update_ratio/{group}"] == pytest.approx((delta.norm() / weight).item(), rel=1e-4)
    assert 0 <= entry["fop/beta_abs_median"] <= 0.5 and 0 <= entry["fop/eta_median"] <= 2.0


# -- the spike rule the monitor and the study reports share --------------------------------------------------

def test_spike_threshold_matches_hand_computed_z_scores():
    # 16 alternating points 2.0/2.1: mean 2.05, sample std sqrt(16 * 0.05**2 / 15) = 0.05164.
    base = [2.0, 2.1] * 8
    std = math.sqrt(16 * 0.05**2 / 15)
    below, above = 2.05 + 2.99 * std, 2.05 + 3.01 * std
    assert spike_indices(base + [below], window=16, zscore=3.0) == []
    assert spike_indices(base + [above], window=16, zscore=3.0) == [16]
    assert spike_indices(base + [above], window=16, zscore=3.1) == []


def test_spikes_stay_out_of_the_window_and_need_enough_history():
    base = [2.0, 2.1] * 8
    # Two spikes in a row: the first does not inflate the window, so the second is caught too.
    assert spike_indices(base + [9.0, 9.0, 2.0], window=16) == [16, 17]
    # NaN is skipped, not a spike, and does not poison the window.
    assert spike_indices(base + [math.nan, 9.0], window=16) == [17]
    # Fewer than window // 2 points before it: no verdict.
    assert spike_indices([2.0, 2.1, 2.0, 9.0], window=16) == []
    assert spike_indices([2.0, 2.1] * 4 + [9.0], window=16) == [8]
