"""Issue 12 through the training loop: run folders, strict final.json, the val split checked up front, the warm-up
saved before its evaluation, the NaN guard, clear errors for bad flags/config/disk (numbered as in the issue)."""

from __future__ import annotations

import errno
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import TINY, assert_states_equal, tiny_config
from udaseg.config import ConfigError, to_dict
from udaseg.fileio import UserError
from udaseg.train import NonFiniteLoss, main, train

QUICK = {"train.warmup_iters": 1, "train.iters": 1}


def tiny_args(*extra: str) -> list[str]:
    """The tiny config as --set flags; --iters/--warmup-iters given in `extra` are not overridden by them."""
    sets = [s for s in TINY if not any(s.startswith(f"train.{f[2:].replace('-', '_')}=") for f in extra)]
    return [x for s in sets for x in ("--set", s)] + list(extra)


def strict_json(path):
    def refuse(name):
        raise ValueError(f"{path} holds {name}: not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def finite_tensors(payload, path=""):
    """Names of the non-finite floating tensors in a nested payload (empty when all are finite)."""
    if isinstance(payload, torch.Tensor):
        return [] if not payload.is_floating_point() or torch.isfinite(payload).all() else [path]
    if isinstance(payload, dict):
        return [n for k, v in payload.items() for n in finite_tensors(v, f"{path}.{k}")]
    if isinstance(payload, (list, tuple)):
        return [n for i, v in enumerate(payload) for n in finite_tensors(v, f"{path}[{i}]")]
    return []


# ----------------------------------------------------------------------------- 2. run folders
def test_a_folder_holding_another_run_is_refused(tmp_path):
    cfg = tiny_config("source_only", **QUICK)
    train(cfg, tmp_path, stop_after=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    other = tiny_config("source_only", **QUICK, **{"optim.lr": 0.002})
    with pytest.raises(
        UserError,
        match=r"already holds a run \(config.yaml, metrics.jsonl, last.pt\).*--resume.*"
        r"--overwrite",
    ):
        train(other, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # nothing touched
    train(other, tmp_path, overwrite=True)  # replacing it is explicit
    assert "lr: 0.002" in (tmp_path / "config.yaml").read_text() and (tmp_path / "final.json").is_file()


def test_resume_with_another_config_names_the_keys(tmp_path, capsys):
    cfg = tiny_config("source_only", **QUICK)
    train(cfg, tmp_path, stop_after=1)
    changed = tiny_config("source_only", **QUICK, **{"optim.lr": 0.002, "train.seed": 3})
    with pytest.raises(
        ConfigError,
        match=r"2 key\(s\): optim.lr: 0.001 in the run, 0.002 now; train.seed: 0 in the "
        r"run, 3 now",
    ):
        train(changed, tmp_path, resume=True)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == 1  # untouched
    train(tiny_config("source_only", **QUICK, **{"train.log_every": 2}), tmp_path, resume=True)  # a free key
    assert "train.log_every: 1 in the run, 2 now (does not change what is computed)" in capsys.readouterr().out


def test_cli_refuses_resume_and_overwrite_together(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # argparse's own usage error, exit code 2
        main(["--out", str(tmp_path), "--resume", "--overwrite"])
    assert e.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 3. val split, final.json
def write_unlabelled_cityscapes(root, n=2):
    city = root / "leftImg8bit" / "val" / "aachen"
    city.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 64, 3), dtype=np.uint8)).save(city / f"a_{i}_leftImg8bit.png")


def test_an_unlabelled_val_split_is_refused_before_training_unless_no_eval(tmp_path, capsys):
    write_unlabelled_cityscapes(tmp_path / "cs")
    args = tiny_args("--set", f"data.val=cityscapes:{tmp_path / 'cs'}", "--method", "source_only")
    assert main(["--out", str(tmp_path / "a"), *args]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "label" in err and "Traceback" not in err
    assert not (tmp_path / "a" / "last.pt").exists()  # refused before the first iteration
    assert main(["--out", str(tmp_path / "b"), "--no-eval", *args]) == 0
    final = strict_json(tmp_path / "b" / "final.json")
    assert final["miou"] is None and final["evaluated"] is False and final["iterations"] == 5


def test_check_data_only_checks(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["--check-data", *tiny_args()]) == 0
    out = capsys.readouterr().out
    assert "checked source" in out and "checked target" in out and "checked val" in out and "data check passed" in out
    assert list(tmp_path.iterdir()) == []  # no run folder
    write_unlabelled_cityscapes(tmp_path / "cs")
    assert main(["--check-data", *tiny_args("--set", f"data.val=cityscapes:{tmp_path / 'cs'}")]) == 2


def test_final_json_never_holds_nan(tmp_path, monkeypatch):
    import udaseg.engine.report as R
    import udaseg.train as T

    def no_labelled_pixel(run, cfg, full):  # what an all-ignore val split gives: mIoU NaN
        return {"miou": math.nan, "per_class": {"road": None}, "protocol": 19, "pixel_acc": math.nan}

    for module in (T, R):  # the loop's periodic evaluation and the report's before/after ones
        monkeypatch.setattr(module, "eval_teacher", no_labelled_pixel)
    train(tiny_config("source_only", **QUICK), tmp_path)
    final = strict_json(tmp_path / "final.json")
    assert final["miou"] is None and final["before"]["miou"] is None
    for line in (tmp_path / "metrics.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"metrics.jsonl holds {name}"))


# ----------------------------------------------------------------------------- 4. the warm-up is saved first
def test_end_of_warmup_is_saved_before_its_evaluation(tmp_path, monkeypatch):
    import udaseg.engine.report as R
    import udaseg.train as T

    def bad_val_image(run, cfg, full):
        raise OSError("val image unreadable")

    for module in (T, R):  # the loop's periodic evaluation and the report's before/after ones
        monkeypatch.setattr(module, "eval_teacher", bad_val_image)
    with pytest.raises(OSError, match="unreadable"):
        train(tiny_config("source_only"), tmp_path)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["iteration"] == 2  # the warm-up is not lost


def test_resume_from_the_end_of_the_warmup_is_exact(tmp_path):
    from tests.helpers import check_resume_exact

    check_resume_exact(tiny_config("self_training"), tmp_path, stop_after=2)  # "before" evaluated again on resume


# ----------------------------------------------------------------------------- 5. the NaN guard
def test_a_skipped_step_changes_no_state(tmp_path, monkeypatch):
    """A step with a NaN loss leaves weights, BatchNorm statistics, teacher and optimizer as they were."""
    import udaseg.train as T

    real = T.train_step

    def poisoned(step, methods, *rest):
        losses = real(step, methods, *rest)
        if step.iteration == 2:  # the last step
            losses["source_ce"] = losses["source_ce"] * math.nan
        return losses

    cfg = tiny_config("source_only", **{"train.warmup_iters": 0, "train.iters": 3})
    train(cfg, tmp_path / "two", stop_after=2)
    monkeypatch.setattr(T, "train_step", poisoned)
    train(cfg, tmp_path / "three")
    two, three = (torch.load(tmp_path / d / "last.pt", weights_only=True) for d in ("two", "three"))
    assert three["iteration"] == 3
    for key in ("model", "teacher"):
        assert_states_equal(two[key], three[key], key)  # bitwise, BatchNorm running statistics included
    assert_states_equal(two["optimizer"]["state"], three["optimizer"]["state"], "optimizer")  # lr moved on


def test_a_huge_learning_rate_never_leaves_non_finite_tensors_in_last_pt(tmp_path, capsys):
    cfg = tiny_config(
        "source_only",
        **{
            "train.warmup_iters": 0,
            "train.iters": 16,
            "train.ckpt_every": 1,
            "optim.lr": 1e30,
            "optim.warmup_iters": 0,
        },
    )
    with pytest.raises(NonFiniteLoss) as e:
        train(cfg, tmp_path)
    payload = torch.load(tmp_path / "last.pt", weights_only=True)
    assert finite_tensors({k: payload[k] for k in ("model", "teacher", "optimizer", "heads", "methods")}) == []
    assert f"holds iteration {payload['iteration']}" in str(e.value)  # the message says what last.pt holds


# ----------------------------------------------------------------------------- 7. clear errors
@pytest.mark.parametrize("args, message", [
    (["--set", "train.log_every=0"], "train.log_every=0: expected an integer >= 1"),
    (["--set", "data.crop=[64]"], "data.crop=[64]: expected two positive ints"),
    (["--set", "data.crop=[0, 0]"], "data.crop=[0, 0]: expected two positive ints"),
    (["--set", "model.name=resnet"], "model.name='resnet': no such model; available: compact"),
    (["--iters", "-1"], "train.iters=-1: expected an integer >= 0"),
    (["--warmup-iters", "-5"], "train.warmup_iters=-5: expected an integer >= 0"),
    (["--warmup", "dida"], "train.warmup='dida' is not a warm-up; valid: diga, source_only"),
])  # fmt: skip
def test_bad_flags_and_values_are_one_line_errors(tmp_path, capsys, args, message):
    assert main(["--out", str(tmp_path), *tiny_args(*args)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "config.yaml").exists()


def test_a_full_disk_is_one_line_and_leaves_no_temporary_file(tmp_path, capsys, monkeypatch):
    real_save = torch.save

    def disk_full(obj, f, *a, **kw):
        if getattr(f, "name", "").startswith(str(tmp_path)):
            f.write(b"\0" * 2**20)  # a megabyte in, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(torch, "save", disk_full)
    assert main(["--out", str(tmp_path), *tiny_args()]) == 2
    err = capsys.readouterr().err
    assert f"cannot write {tmp_path / 'last.pt'}: no space left on the device" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir() if "tmp" in p.name] == []


# ----------------------------------------------------------------------------- 13. the loop's contract
def test_train_does_not_change_the_callers_config(tmp_path):
    cfg = tiny_config("self_training", **QUICK)
    before = to_dict(cfg)
    train(cfg, tmp_path)
    assert to_dict(cfg) == before
    assert "self_training" in strict_json_yaml(tmp_path / "config.yaml")["methods"]  # the run's copy is resolved


def strict_json_yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())


def test_loss_terms_are_always_named_by_plug_in():
    from udaseg.methods import Method, Step
    from udaseg.models import build_model
    from udaseg.train import train_step

    class Term(Method):
        needs_target = False

        def losses(self, step):
            return {"consistency": step.student_source["logits"].mean()}

    a, b = Term(), Term()
    a.name, b.name = "a", "b"
    model = build_model("compact", num_classes=19, width=8)
    step = Step(
        iteration=0,
        source_image=torch.rand(1, 3, 32, 32),
        source_label=torch.zeros(1, 32, 32).long(),
        student=model,
        teacher=model,
    )
    assert set(train_step(step, [a, b])) == {"source_ce", "a/consistency", "b/consistency"}
    assert set(train_step(step, [a])) == {"source_ce", "a/consistency"}  # no collision: still prefixed
