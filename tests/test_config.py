"""Config validation, YAML conversion, and the golden run identities."""

import dataclasses

import pytest

from hpcdd.config import ExecConfig, RunConfig, from_dict, non_default, resolve, run_id, to_dict
from hpcdd.errors import ConfigError


def test_defaults_are_the_papers():
    """Changing a default renames runs: this golden test makes that a visible decision."""
    assert to_dict(RunConfig()) == {
        "method": "dm", "dataset": "fashionmnist", "ipc": 10, "seed": 0, "iterations": None,
        "im_size": None, "net": "convnet3", "sampler": "random", "init": "real", "batch_real": 256,
        "lr_img": None, "momentum_img": 0.5, "dsa": True, "dsa_strategy": None, "precision": "fp32",
        "eval_models": ["convnet3"], "eval_epochs": 1000, "eval_n": 5, "eval_lr": 0.01,
        "eval_batch": 256, "eval_dsa": True,
    }


def test_golden_run_ids():
    assert run_id(RunConfig()) == "44136fa355b3"  # sha256 of "{}"
    resolved = resolve(RunConfig())
    assert resolved.iterations == 20000 and resolved.lr_img == 1.0
    assert resolved.dsa_strategy == "color_crop_cutout_flip_scale_rotate"
    assert run_id(resolved) == "9676a23c6917"


def test_identity_ignores_defaults_and_sees_changes():
    a = RunConfig(ipc=10)  # same as the default: same identity
    assert run_id(a) == run_id(RunConfig())
    assert non_default(a) == {}
    assert run_id(RunConfig(seed=1)) != run_id(RunConfig(seed=0))


def test_resolve_digit_datasets_drop_flip_and_coresets_take_no_iterations():
    r = resolve(RunConfig(method="random", dataset="digits", iterations=200))
    assert r.iterations == 0
    assert "flip" not in r.dsa_strategy


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"ipc": 0}, "ipc"),
        ({"iterations": -1}, "iterations"),
        ({"ipc": "10"}, "ipc"),
        ({"dsa": 1}, "dsa"),
        ({"eval_models": ()}, "eval_models"),
        ({"init": "zeros"}, "init"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_bad_values_raise_config_error(kwargs, words):
    with pytest.raises(ConfigError, match=words):
        RunConfig(**kwargs)


@pytest.mark.parametrize("key, value", [("method", "nope"), ("dataset", "nope"), ("net", "nope"),
                                         ("sampler", "nope"), ("dsa_strategy", "color_blur")])
def test_unknown_names_raise_on_resolve(key, value):
    with pytest.raises(ConfigError):
        resolve(RunConfig(**{key: value}))


def test_from_dict_converts_and_rejects():
    cfg = from_dict(RunConfig, {"eval_models": ["convnet3", "resnet18"], "lr_img": 1, "ipc": 50})
    assert cfg.eval_models == ("convnet3", "resnet18") and isinstance(cfg.lr_img, float)
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(RunConfig, {"ipcs": 1})
    with pytest.raises(ConfigError, match="must be int"):
        from_dict(RunConfig, {"ipc": "ten"})
    with pytest.raises(ConfigError, match="mapping"):
        from_dict(RunConfig, ["ipc"])


def test_exec_config_is_not_identity():
    assert "checkpoint_every" not in {f.name for f in dataclasses.fields(RunConfig)}
    with pytest.raises(ConfigError):
        ExecConfig(checkpoint_every=0)


def test_protocol_labels():
    assert RunConfig().protocol == "dc1000"
    assert RunConfig(eval_epochs=300).protocol == "dc300"
    assert RunConfig(eval_epochs=300, eval_dsa=False).protocol == "dc300-noaug"


def test_ints_for_float_fields_are_one_identity_and_non_finite_is_rejected():
    assert run_id(RunConfig(lr_img=1)) == run_id(RunConfig(lr_img=1.0))
    assert isinstance(RunConfig(momentum_img=0).momentum_img, float)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="finite"):
            RunConfig(lr_img=bad)
    with pytest.raises(ConfigError, match="twice"):
        RunConfig(eval_models=("convnet3", "convnet3"))
