"""The typed config: option bounds (one error naming the option) and the float spellings people write."""

import pytest

from sslspeaker.config import ConfigError, load_config, load_yaml


@pytest.mark.parametrize("override, message", [
    ("train.batch_size=-4", "train.batch_size=-4: expected >= 1"),
    ("train.batch_size=0", "train.batch_size=0: expected >= 1"),
    ("train.epochs=0", "train.epochs=0: expected >= 1"),
    ("train.log_every=0", "train.log_every=0: expected >= 1"),
    ("train.checkpoint_every=-1", "train.checkpoint_every=-1: expected >= 0"),
    ("train.max_nonfinite=0", "train.max_nonfinite=0: expected >= 1"),
    ("train.device=foo", "train.device='foo': expected auto, cpu, cuda, cuda:N or mps"),
    ("train.precision=fp8", "train.precision='fp8': expected fp32, bf16 or fp16"),
    ("data.crop_seconds=0", "data.crop_seconds=0.0: expected > 0"),
    ("data.n_views=0", "data.n_views=0: expected >= 1"),
    ("data.labelled_fraction=1.5", "data.labelled_fraction=1.5: expected in [0, 1]"),
    ("data.workers=-1", "data.workers=-1: expected >= 0"),
    ("data.n_local_views=2", "data.local_crop_seconds=0.0: expected > 0 with data.n_local_views > 0"),
    ("optim.lr=-1.0", "optim.lr=-1.0: expected > 0"),
    ("optim.lr=0", "optim.lr=0.0: expected > 0"),
    ("optim.momentum=1.0", "optim.momentum=1.0: expected in [0, 1)"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay=-0.0001: expected >= 0"),
    ("features.n_mels=0", "features.n_mels=0: expected >= 1"),
    ("validation.max_seconds=-2", "validation.max_seconds=-2.0: expected >= 0"),
    ("augment.bandlimit=2", "augment.bandlimit must be in [0, 1], got 2.0"),
    ("augment.bandlimit_hz=[4000, 3000]", "augment.bandlimit_hz: low 4000.0 > high 3000.0"),
    ("optim.lr=.nan", "optim.lr: expected a finite number, got nan"),
])
def test_out_of_bounds_options_are_refused_naming_the_option(override, message):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert str(info.value) == f"config: {message}"


def test_defaults_and_boundary_values_are_accepted():
    cfg = load_config(None, ["train.checkpoint_every=0", "data.labelled_fraction=0", "data.workers=0",
                             "train.device=cuda:1", "optim.momentum=0", "data.n_views=1"])
    assert (cfg.train.checkpoint_every, cfg.data.labelled_fraction, cfg.train.device) == (0, 0.0, "cuda:1")
    assert cfg.data.n_views == 1 and cfg.optim.momentum == 0.0


@pytest.mark.parametrize("text, value", [
    ("1e-3", 1e-3), ("1.0e30", 1.0e30), ("1E-3", 1e-3), ("+2.5e+2", 250.0), ("-1e3", -1000.0), (".5e1", 5.0),
    ("3e0", 3.0), ("1_000.5e-1", 100.05), ("0.001", 0.001), ("1.0e+30", 1.0e30),
])
def test_every_float_spelling_is_a_number(text, value):
    assert load_yaml(text) == pytest.approx(value) and isinstance(load_yaml(text), float)
    assert load_config(None, [f"augment.eq_db={text.lstrip('-+')}"]).augment.eq_db == pytest.approx(abs(value))


def test_float_spellings_in_overrides_recipes_and_method_options(tmp_path):
    cfg = load_config(None, ["optim.lr=1e-3", "optim.weight_decay=1.0e30", "method.options={temperature: 2e-2}"])
    assert cfg.optim.lr == 1e-3 and cfg.optim.weight_decay == 1.0e30 and cfg.method.options == {"temperature": 0.02}
    (tmp_path / "r.yaml").write_text("optim: {lr: 5e-4, grad_clip: 1E1}\ntrain: {epochs: 3}\n")
    cfg = load_config(tmp_path / "r.yaml")
    assert cfg.optim.lr == 5e-4 and cfg.optim.grad_clip == 10.0 and cfg.train.epochs == 3


def test_integers_strings_and_yaml_safety_are_unchanged():
    assert load_yaml("10") == 10 and isinstance(load_yaml("10"), int)
    assert load_yaml("e3") == "e3" and load_yaml("1e") == "1e" and load_yaml("abc") == "abc"
    assert load_yaml("1.5") == 1.5 and load_yaml(".inf") == float("inf")
    with pytest.raises(Exception, match="could not determine a constructor"):
        load_yaml("!!python/object/apply:os.system ['true']")
    with pytest.raises(ConfigError, match="train.epochs: expected an integer, got 1.5"):
        load_config(None, ["train.epochs=1.5"])
