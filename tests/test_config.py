import pytest

from udaseg.config import Config, ConfigError, from_dict, load_config, parse_override, save_config, to_dict


def test_defaults_roundtrip(tmp_path):
    cfg = Config()
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  iters: 10\n")
    cfg = load_config(path, ["optim.lr=3e-4", "data.crop=[64, 96]", "train.amp=false", "methods.dida.tau=0.1"])
    assert cfg.train.iters == 10
    assert cfg.optim.lr == pytest.approx(3e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.data.crop == [64, 96]
    assert cfg.train.amp is False
    assert cfg.methods == {"dida": {"tau": 0.1}}


def test_int_accepted_for_float_but_not_reverse():
    assert from_dict({"optim": {"lr": 1}}).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"train.iters: expected int"):
        from_dict({"train": {"iters": 1.5}})


@pytest.mark.parametrize(
    "data, message",
    [
        ({"trian": {}}, r"unknown key\(s\) \['trian'\]"),
        ({"train": {"itres": 3}}, r"config.train: unknown key\(s\) \['itres'\]"),
        ({"train": {"amp": "yes"}}, r"train.amp: expected true/false"),
        ({"data": {"crop": 5}}, r"data.crop: expected a list"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(data)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_to_dict_is_plain():
    d = to_dict(Config())
    assert d["train"]["method"] == "self_training" and isinstance(d["data"]["crop"], list)


def test_validate_names_every_bad_key_at_once():
    from udaseg.config import validate

    cfg = from_dict({"train": {"log_every": 0, "iters": -2}, "data": {"crop": [64]}, "optim": {"lr": -1.0}})
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    for text in ("train.log_every=0", "train.iters=-2", "data.crop=[64]", "optim.lr=-1.0"):
        assert text in str(e.value)
    assert validate(Config()) == Config()


def test_resume_diff_splits_free_keys_and_ignores_new_defaults():
    from udaseg.config import resume_diff

    saved = to_dict(Config())
    del saved["train"]["evaluate"]  # a run saved before the key existed: its default is not a difference
    now = from_dict({"train": {"log_every": 5, "seed": 7}})
    changed, free = resume_diff(saved, now)
    assert changed == ["train.seed: 0 in the run, 7 now"] and free == ["train.log_every: 20 in the run, 5 now"]


def test_validate_checks_monitor_and_augment_before_any_data_is_built():
    from udaseg.config import validate

    cfg = load_config(
        None, ["monitor.criterion=foo", "monitor.on_collapse=panic", "augment.blur=2", "monitor.probe_images=0"]
    )
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    for key in ("monitor.criterion='foo'", "monitor.on_collapse='panic'", "augment.blur=2.0", "monitor.probe_images=0"):
        assert key in str(e.value)
    validate(load_config(None, ["monitor.criterion=snd", "augment.fda=0.5"]))  # valid values pass
