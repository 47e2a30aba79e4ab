"""The optimizer registry: records, lookups with helpful errors, third-party registration, the CLI."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from helpers import REPO

from hf_foco import cli
from hf_foco.optim import (
    FOCUS,
    FOCUS16bit,
    Lion,
    OptimizerSpec,
    RegisteredNames,
    Signum,
    create_optimizer,
    get_optimizer,
    list_optimizers,
    param_groups,
    register_optimizer,
    registry,
)
from hf_foco.optim.adamw import AdamW
from hf_foco.optim.hyperparameters import hyperparameter_defaults, resolve_hyperparameters


@pytest.fixture
def clean_registry(monkeypatch):
    """Registrations made by a test vanish after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_builtin_records():
    expected = {"foco": FOCUS16bit, "focus": FOCUS, "signum": Signum, "lion": Lion, "adamw": AdamW}
    names = {spec.name: spec.cls for spec in list_optimizers()}
    for name, cls in expected.items():
        assert names[name] is cls
    assert issubclass(AdamW, torch.optim.AdamW)  # torch's, refusing another optimizer's state
    assert get_optimizer("FOCO").state_bytes_per_param == 4
    assert get_optimizer("focus").defaults["gamma"] == 0.2


def test_unknown_name_lists_known_names_and_closest_match():
    with pytest.raises(KeyError) as info:
        get_optimizer("focs")
    message = str(info.value)
    assert "Did you mean 'focus'?" in message
    assert all(name in message for name in ("foco", "signum", "lion", "adamw"))


def test_register_as_decorator_and_live_names(clean_registry):
    names = RegisteredNames()
    assert "sgd_demo" not in names

    @register_optimizer("sgd_demo", defaults={"lr": 0.5}, needs_layer_hooks=False)
    class Demo(torch.optim.SGD):
        pass

    assert "sgd_demo" in names and "sgd_demo" in list(names)
    p = torch.nn.Parameter(torch.ones(2))
    opt = create_optimizer("sgd_demo", [p])
    assert isinstance(opt, Demo) and opt.param_groups[0]["lr"] == 0.5
    with pytest.raises(ValueError, match="already registered"):
        register_optimizer("sgd_demo", Demo)


def test_records_reject_non_optimizers_and_bad_defaults(clean_registry):
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        register_optimizer("bad", dict)
    with pytest.raises(TypeError, match="not arguments of FOCUS"):
        register_optimizer("bad2", FOCUS, defaults={"gama": 0.1})


def test_create_optimizer_rejects_unknown_overrides_with_a_hint():
    p = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="'gama' \\(did you mean 'gamma'\\?\\)"):
        create_optimizer("focus", [p], gama=0.3)


def test_create_optimizer_groups_a_model_like_nanogpt():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = create_optimizer("foco", model, weight_decay=0.3, lr=1e-3)
    decayed, undecayed = opt.param_groups
    assert decayed["weight_decay"] == 0.3 and undecayed["weight_decay"] == 0.0
    assert decayed["param_names"] == ["0.weight", "1.weight"]
    assert undecayed["param_names"] == ["1.bias", "2.weight", "2.bias"]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}


def test_param_group_policies():
    model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    # transformers' policy keeps decay on everything but biases and norms; "2" is the LayerNorm here, so
    # name it like GPT-2 does to be recognised.
    named = torch.nn.ModuleDict({"wte": torch.nn.Embedding(10, 4), "c_fc": torch.nn.Linear(4, 4),
                                 "ln_f": torch.nn.LayerNorm(4)})
    groups = param_groups(named, 0.1, policy="no_bias_or_norm")
    assert groups[0]["param_names"] == ["wte.weight", "c_fc.weight"]
    assert param_groups(model, 0.1, policy="all")[0]["param_names"] == [n for n, _ in model.named_parameters()]
    with pytest.raises(ValueError, match="weight_decay_policy"):
        param_groups(model, 0.1, policy="mine")


def test_entry_points_register_third_party_optimizers(clean_registry, monkeypatch):
    class Plugin(torch.optim.SGD):
        pass

    spec = OptimizerSpec(name="plugin_sgd", cls=Plugin, defaults={"lr": 0.1})

    class FakeEntryPoint:
        name = "plugin_sgd"

        def load(self):
            return spec

    monkeypatch.setattr(registry, "_entry_points_loaded", False)
    monkeypatch.setattr(registry, "entry_points", lambda group: [FakeEntryPoint()] if
                        group == registry.ENTRY_POINT_GROUP else [])
    assert get_optimizer("plugin_sgd") is spec


def test_layer_hook_optimizers_need_the_model(clean_registry):
    class Hooked(torch.optim.SGD):
        def __init__(self, params, model, lr=0.1):
            self.model = model
            super().__init__(params, lr=lr)

    register_optimizer("hooked_demo", Hooked, needs_layer_hooks=True)
    model = torch.nn.Linear(2, 2)
    assert create_optimizer("hooked_demo", model).model is model
    with pytest.raises(TypeError, match="pass the model"):
        create_optimizer("hooked_demo", model.parameters())


def test_cli_lists_every_optimizer_with_defaults(capsys):
    assert cli.main(["optimizers", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["foco"]["state_bytes_per_param"] == 4
    assert rows["signum"]["defaults"]["momentum"] == 0.9
    assert set(rows) == {spec.name for spec in list_optimizers()}


def test_every_record_says_where_its_defaults_come_from():
    for spec in list_optimizers():
        assert spec.defaults_from, spec.name
        assert "recommend" not in f"{spec.defaults_from} {spec.description}".lower()


GPT2_SMALL = sorted((REPO / "recipes" / "gpt2-small").glob("*.yaml"))


@pytest.mark.parametrize("recipe", GPT2_SMALL, ids=lambda p: p.stem)
def test_the_gpt2_small_recipes_restate_the_registry_defaults(recipe):
    """The registry's defaults are the GPT-2 small setting; the GPT-2 small recipes use exactly that (the nano
    recipes hold what was measured at nano scale instead)."""
    settings = yaml.safe_load(recipe.read_text())
    spec = get_optimizer(settings["optim"])
    kwargs = resolve_hyperparameters(
        spec, learning_rate=settings["learning_rate"], weight_decay=settings.get("weight_decay"),
        betas=(settings.get("adam_beta1", 0.9), settings.get("adam_beta2", 0.999)),
        optim_args=settings.get("optim_args"), optim_kwargs=None)
    assert {k: kwargs[k] for k in spec.defaults} == dict(spec.defaults)


def test_a_subclass_passing_kwargs_on_is_read_with_its_parent():
    """FOP adds two arguments to K-FAC's and passes the rest on: the registry reads one signature."""
    fop, kfac = get_optimizer("fop"), get_optimizer("kfac")
    assert fop.hyperparameter_names() == kfac.hyperparameter_names() | {"beta_max", "eta_max"}
    defaults = hyperparameter_defaults(fop)
    assert defaults["beta_max"] == 0.5 and defaults["factor_ema"] == 0.5 and defaults["lr"] == 6e-4
    assert fop.takes_model and not get_optimizer("foco").takes_model

    class Plain(torch.optim.SGD):
        def __init__(self, params, *, nesterov_boost: float = 0.0, **kwargs):
            super().__init__(params, **kwargs)

    assert set(registry.init_parameters(Plain)) >= {"params", "nesterov_boost", "lr", "momentum"}
