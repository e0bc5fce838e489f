"""Configs, parameters declared with their method, resolution, and the golden identities."""

import dataclasses
import subprocess
import sys

import pytest

from hpcdd.catalog import (
    check_names, check_registries, configs_from_flat, eval_id, flat_run, resolve, resolve_eval, run_id,
)
from hpcdd.config import EvalConfig, ExecConfig, RunConfig, from_dict, non_default, to_dict
from hpcdd.errors import ConfigError
from hpcdd.names import DATASET_NAMES, DATASET_SIZES, NET_LAYERS, NET_NAMES


def test_defaults_are_the_papers():
    """Changing a default renames runs: this golden test makes that a visible decision."""
    assert to_dict(RunConfig()) == {
        "method": "dm", "dataset": "fashionmnist", "ipc": 10, "seed": 0, "iterations": None,
        "im_size": None, "net": "convnet3", "sampler": "random", "batch_real": 256, "dsa": True,
        "dsa_strategy": None, "precision": "fp32", "params": {}, "sampler_params": {},
    }
    assert to_dict(EvalConfig()) == {"models": ["convnet3"], "epochs": 1000, "n": 5, "lr": 0.01,
                                     "batch": 256, "dsa": True, "kind": "fixed", "ipc": None}
    assert resolve(RunConfig()).params == {"lr_img": 1.0, "momentum_img": 0.5, "init": "real"}


def test_golden_ids():
    assert run_id(resolve(RunConfig())) == "4442e3b2e979"  # {dsa_strategy, iterations}
    assert eval_id(EvalConfig()) == "44136fa355b3"  # sha256 of "{}"
    assert eval_id(EvalConfig(epochs=300, n=3)) == eval_id(EvalConfig(n=3, epochs=300))
    resolved = resolve(RunConfig())
    assert resolved.iterations == 20000
    assert resolved.dsa_strategy == "color_crop_cutout_flip_scale_rotate"


def test_identity_ignores_defaults_and_sees_changes():
    base = run_id(resolve(RunConfig()))
    assert run_id(resolve(RunConfig(ipc=10))) == base
    assert run_id(resolve(RunConfig(params={"lr_img": 1.0}))) == base  # the method's own default
    assert run_id(resolve(RunConfig(iterations=20000))) == base  # the method's paper default
    assert run_id(resolve(RunConfig(params={"lr_img": 0.5}))) != base
    assert run_id(resolve(RunConfig(seed=1))) != base
    assert non_default(RunConfig(ipc=10)) == {}


def test_evaluation_is_not_part_of_the_distillation_identity():
    a, ea = configs_from_flat({"method": "dm", "eval_epochs": 300, "eval_models": ["alexnet"]})
    b, eb = configs_from_flat({"method": "dm"})
    assert run_id(resolve(a)) == run_id(resolve(b))
    assert eval_id(ea) != eval_id(eb) and ea.models == ("alexnet",)


def test_resolve_digit_datasets_drop_flip_and_coresets_take_no_iterations():
    r = resolve(RunConfig(method="random", dataset="digits", iterations=200))
    assert r.iterations == 0
    assert "flip" not in r.dsa_strategy


def test_flat_keys_are_sorted_to_their_owner():
    run, ev = configs_from_flat({"method": "dm", "ipc": 1, "lr_img": 2, "eval_epochs": 7,
                                 "params": {"init": "noise"}})
    assert run.ipc == 1 and run.params == {"lr_img": 2, "init": "noise"}
    assert ev.epochs == 7
    r = resolve(run)
    assert r.params["lr_img"] == 2.0 and isinstance(r.params["lr_img"], float)
    assert flat_run(r)["lr_img"] == 2.0 and "params" not in flat_run(r)


@pytest.mark.parametrize(
    "data, words",
    [
        ({"ipcs": 3}, "unknown key.*ipcs"),
        ({"method": "random", "lr_img": 1.0}, "lr_img is not a parameter of method random"),
        ({"lr_img": 1.0, "params": {"lr_img": 2.0}}, "lr_img set both flat and under params"),
        ({"params": [1]}, "params must be a mapping"),
        ({"method": 3}, "'method' must be a name"),
        ({"method": "nope"}, "unknown method 'nope'"),
        ({"sampler": "nope"}, "unknown sampler 'nope'"),
        ({"eval_kind": "best"}, "eval_kind must be one of"),
    ],
)
def test_bad_flat_configs(data, words):
    with pytest.raises(ConfigError, match=words) as e:
        configs_from_flat(data, where="c.yaml")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"ipc": 0}, "ipc"),
        ({"iterations": -1}, "iterations"),
        ({"ipc": "10"}, "ipc"),
        ({"dsa": 1}, "dsa"),
        ({"precision": "fp8"}, "precision"),
        ({"seed": -1}, "seed"),
        ({"batch_real": 0}, "batch_real"),
    ],
)
def test_bad_values_raise_config_error(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        RunConfig(**kwargs)


@pytest.mark.parametrize(
    "params, words",
    [({"lr_img": 0.0}, "lr_img"), ({"momentum_img": -1}, "momentum_img"), ({"momentum_img": 1.0}, "momentum_img"),
     ({"init": "zeros"}, "init"), ({"lr_img": float("nan")}, "finite"), ({"nope": 1}, "unknown key.*nope")],
)
def test_method_parameters_are_validated_by_the_method(params, words):
    with pytest.raises(ConfigError, match=words):
        resolve(RunConfig(params=params))


@pytest.mark.parametrize("kwargs, words", [({"models": ()}, "models"), ({"epochs": 0}, "epochs"),
                                           ({"lr": 0}, "lr"), ({"models": ("a", "a")}, "twice"),
                                           ({"ipc": 0}, "ipc")])
def test_bad_eval_values(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        EvalConfig(**kwargs)


def test_image_methods_refuse_resample_and_another_ipc():
    run = resolve(RunConfig(ipc=10))
    with pytest.raises(ConfigError, match="resample"):
        resolve_eval(EvalConfig(kind="resample"), run)
    with pytest.raises(ConfigError, match="eval_ipc 50 differs"):
        resolve_eval(EvalConfig(ipc=50), run)
    assert resolve_eval(EvalConfig(ipc=10), run).ipc == 10


@pytest.mark.parametrize("key, value", [("method", "nope"), ("sampler", "nope"), ("dsa_strategy", "color_blur")])
def test_unknown_names_raise_on_resolve(key, value):
    with pytest.raises(ConfigError):
        resolve(RunConfig(**{key: value}))


@pytest.mark.parametrize("key, value", [("dataset", "nope"), ("net", "nope")])
def test_unknown_dataset_and_net_names(key, value):
    with pytest.raises(ConfigError, match=f"unknown {key} 'nope'"):
        check_names(RunConfig(**{key: value}))
    with pytest.raises(ConfigError, match="unknown net 'nope'"):
        check_names(RunConfig(), [EvalConfig(models=("convnet3", "nope"))])


def test_coresets_take_no_parameters():
    with pytest.raises(ConfigError, match="unknown key.*x"):
        resolve(RunConfig(method="random", params={"x": 1}))


def test_from_dict_converts_and_rejects():
    cfg = from_dict(EvalConfig, {"models": ["convnet3", "resnet18"], "lr": 1})
    assert cfg.models == ("convnet3", "resnet18") and isinstance(cfg.lr, float)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(RunConfig, {"ipcs": 1})
    with pytest.raises(ConfigError, match="must be int"):
        from_dict(RunConfig, {"ipc": "ten"})
    with pytest.raises(ConfigError, match="mapping"):
        from_dict(RunConfig, ["ipc"])


def test_exec_config_is_not_identity():
    assert "checkpoint_every" not in {f.name for f in dataclasses.fields(RunConfig)}
    for bad in ({"checkpoint_every": 0}, {"checkpoint_minutes": 0}, {"threads": 0}, {"data_root": ""}):
        with pytest.raises(ConfigError):
            ExecConfig(**bad)


def test_protocol_labels():
    assert EvalConfig().protocol == "dc1000"
    assert EvalConfig(epochs=300).protocol == "dc300"
    assert EvalConfig(epochs=300, dsa=False).protocol == "dc300-noaug"
    assert EvalConfig(epochs=300, kind="resample").protocol == "dim-resample300"


def test_ints_for_float_fields_are_one_identity_and_non_finite_is_rejected():
    assert run_id(resolve(RunConfig(params={"lr_img": 1}))) == run_id(resolve(RunConfig(params={"lr_img": 1.0})))
    assert eval_id(EvalConfig(lr=1)) == eval_id(EvalConfig(lr=1.0))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="finite"):
            EvalConfig(lr=bad)


def test_every_flat_key_has_one_owner():
    check_registries()


def test_torch_free_name_lists_match_the_registries():
    from hpcdd.data import DATASETS
    from hpcdd.nets import NETS

    assert list(DATASET_NAMES) == DATASETS.names()
    assert list(NET_NAMES) == NETS.names()
    for name, layers in NET_LAYERS.items():
        assert NETS.get(name)(1, 10, 28).feature_layers == layers, name
    for name in ("digits", "fashionmnist"):  # the datasets every machine here has
        assert DATASETS.get(name).load(None, False, None).info.im_size == DATASET_SIZES[name]


def test_resolution_imports_no_torch_and_no_method():
    code = ("import sys\nfrom hpcdd.catalog import configs_from_flat, resolve, run_id\n"
            "run, ev = configs_from_flat({'method': 'dm', 'lr_img': 0.5})\nrun_id(resolve(run))\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('hpcdd.distill', 'hpcdd.select'))]\n"
            "assert not bad, bad\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
