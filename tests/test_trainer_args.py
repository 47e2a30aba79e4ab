"""FocoTrainingArguments: --optim accepts registry and native names; hyperparameters map and fail early."""

import contextlib
import io

import pytest
import torch
from transformers import HfArgumentParser, TrainingArguments

from hf_foco.optim import get_optimizer, list_optimizers, registry
from hf_foco.trainer import FocoTrainingArguments


def make(**kw):
    return FocoTrainingArguments(output_dir="unused", report_to="none", **kw)


def parse(argv):
    (args,) = HfArgumentParser(FocoTrainingArguments).parse_args_into_dataclasses(
        ["--output_dir", "unused", "--report_to", "none", *argv])
    return args


@pytest.mark.parametrize("name", [s.name for s in list_optimizers()])
def test_every_registry_name_parses_with_its_registry_defaults(name):
    spec = get_optimizer(name)
    args = parse(["--optim", name])
    assert args.optim == name
    signature = registry.init_parameters(spec.cls)
    # the fields the Trainer maps are always passed: the registry default, else the class default
    mapped = {k: signature[k].default for k in ("weight_decay", "betas") if k in signature}
    assert args.optimizer_kwargs() == {**mapped, **spec.defaults}
    assert args.learning_rate == spec.defaults["lr"]
    assert args.weight_decay == spec.defaults.get("weight_decay", 0.0)


def test_native_names_behave_as_in_transformers():
    for argv in (["--optim", "adamw_torch", "--learning_rate", "1e-3"], ["--optim", "sgd"], []):
        ours = parse(argv)
        (theirs,) = HfArgumentParser(TrainingArguments).parse_args_into_dataclasses(
            ["--output_dir", "unused", "--report_to", "none", *argv])
        for key in ("optim", "learning_rate", "weight_decay", "adam_beta1", "adam_beta2", "optim_args"):
            assert getattr(ours, key) == getattr(theirs, key), key


def test_usual_fields_then_optim_args_then_json_override_in_that_order():
    args = parse(["--optim", "foco", "--learning_rate", "1e-3", "--weight_decay", "0.05", "--adam_beta2", "0.95",
                  "--optim_args", "gamma=0.3,beta1=0.8,foreach=false", "--optim_kwargs", '{"gamma": 0.25}'])
    assert args.optimizer_kwargs() == {"lr": 1e-3, "weight_decay": 0.05, "betas": (0.8, 0.95), "gamma": 0.25,
                                       "foreach": False}
    # the usual fields report what is used
    assert (args.learning_rate, args.adam_beta1, args.adam_beta2) == (1e-3, 0.8, 0.95)


def test_json_list_becomes_the_tuple_the_optimizer_expects():
    args = make(optim="lion", optim_kwargs={"betas": [0.95, 0.98]})
    assert args.optimizer_kwargs()["betas"] == (0.95, 0.98)
    assert make(optim="signum", optim_args="momentum=0.5").optimizer_kwargs()["momentum"] == 0.5


def test_help_lists_native_and_registry_names_including_late_registrations(monkeypatch):
    class Late(torch.optim.SGD):
        pass

    monkeypatch.setitem(registry._REGISTRY, "late_opt", registry.OptimizerSpec(name="late_opt", cls=Late,
                                                                                defaults={"lr": 0.1}))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        HfArgumentParser(FocoTrainingArguments).parse_args_into_dataclasses(["--help"])
    text = " ".join(out.getvalue().split())
    for name in ("adamw_torch", "adafactor", "foco", "focus", "signum", "lion", "adamw", "late_opt"):
        assert name in text
    assert parse(["--optim", "late_opt"]).optimizer_kwargs() == {"lr": 0.1, "weight_decay": 0.0}  # SGD default


@pytest.mark.parametrize("kwargs, message", [
    ({"optim": "fooco"}, "Did you mean 'foco'"),
    ({"optim": "foco", "optim_args": "gama=0.2"}, "did you mean 'gamma'"),
    ({"optim": "foco", "optim_args": "gamma=1.5"}, "gamma=1.5: it must be in [0, 1)"),
    ({"optim": "foco", "optim_args": "gamma=strong"}, "must be a number"),
    ({"optim": "foco", "optim_args": "gamma"}, "is not key=value"),
    ({"optim": "foco", "learning_rate": -1.0}, "lr=-1.0: it must be >= 0"),
    ({"optim": "lion", "adam_beta1": 1.2}, "betas[0]=1.2"),
    ({"optim": "focus", "optim_args": "decay_order=sideways"}, "decay_order='sideways'"),
    ({"optim": "signum", "optim_args": "beta2=0.9"}, "has no betas"),
    ({"optim": "signum", "adam_beta2": 0.9}, "takes no betas: drop --adam_beta1/--adam_beta2"),
    ({"optim": "lion", "optim_args": "betas=0.9"}, "JSON list in --optim_kwargs"),
    ({"optim": "foco", "optim_kwargs": '["gamma"]'}, "must be a JSON object"),
    ({"optim": "adamw_torch", "optim_kwargs": '{"gamma": 0.2}'}, "use --optim_args"),
    ({"optim": "foco", "weight_decay_policy": "bias_only"}, "choose one of 'nanogpt'"),
    ({"optim": "foco", "max_bad_steps": 0}, "--max_bad_steps=0"),
    ({"optim": "foco", "push_to_hub": True, "hub_model_id": "u/m"}, "HF_HUB_OFFLINE=1"),
])
def test_bad_arguments_fail_at_construction_naming_the_fix(kwargs, message):
    with pytest.raises(ValueError) as err:
        make(**kwargs)
    assert message in str(err.value)


def test_command_line_rejects_unknown_names_with_the_closest_one_and_where_all_are():
    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit):
        parse(["--optim", "fooco"])
    message = " ".join(err.getvalue().split())
    assert "argument --optim: invalid choice: 'fooco'. Did you mean 'foco'? Choose one of hf_foco's optimizers " \
           "(adamw, foco, focus, fop, kfac, lion, muon, signum; `hf-foco optimizers` describes them) or of " \
           "transformers' (adamw_torch, adamw_torch_fused," in message
    with contextlib.redirect_stderr(io.StringIO()), pytest.raises(SystemExit):
        parse(["--optim", "adamw_troch"])  # a native name's typo too


def test_a_registry_entry_never_shadows_a_native_name(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "sgd", registry.OptimizerSpec(name="sgd", cls=torch.optim.Adam))
    args = make(optim="sgd")
    assert args.optim == "sgd" and args.learning_rate == 5e-5
    assert type(args.optim).__name__ == "OptimizerNames"  # transformers' own path, not the registry's
