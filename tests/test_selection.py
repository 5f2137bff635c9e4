"""Label-free scores against direct formulas, their behaviour on a collapsed model, and the collapse guard."""

import math

import pytest
import torch
from torch import nn

from udaseg.engine.diagnostics import ProbeSet
from udaseg.engine.selection import (
    CollapseGuard,
    agreement_score,
    class_agreement,
    entropy_score,
    im_score,
    score_model,
    snd_score,
)


def probs_of(seed, b=2, c=4, h=5, w=6, sharp=3.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, c, h, w, generator=g) * sharp).softmax(1)


def test_entropy_and_im_match_formulas():
    p = probs_of(0)
    c = p.shape[1]
    pix = p.permute(0, 2, 3, 1).reshape(-1, c).double()
    ent = [-(q * q.log()).sum().item() for q in pix]
    assert entropy_score(p) == pytest.approx(-sum(ent) / len(ent) / math.log(c), rel=1e-5)
    mean = pix.mean(0)
    h_mean = -(mean * mean.log()).sum().item()
    assert im_score(p) == pytest.approx((h_mean - sum(ent) / len(ent)) / math.log(c), rel=1e-5)


def test_snd_matches_a_loop():
    p = probs_of(1, b=2, c=3, h=4, w=5)
    pixels = torch.tensor([[0, 3, 7, 11, 19], [2, 4, 6, 8, 10]])
    per_image = []
    for i in range(2):
        vec = [p[i, :, k // 5, k % 5].double() for k in pixels[i].tolist()]
        vec = [v / v.norm() for v in vec]
        ents = []
        for a in range(5):
            logits = [float(vec[a] @ vec[j]) / 0.05 for j in range(5) if j != a]
            z = torch.tensor(logits).softmax(0)
            ents.append(-(z * z.log()).sum().item())
        per_image.append(sum(ents) / len(ents))
    assert snd_score(p, pixels) == pytest.approx(sum(per_image) / 2 / math.log(4), rel=1e-5)


def test_agreement_counts_absent_classes_as_zero():
    a = torch.tensor([[0, 0, 1, 1], [2, 2, 2, 0]])
    b = torch.tensor([[0, 1, 1, 1], [2, 2, 0, 0]])
    inter, union = class_agreement(a, b, 5)
    # class 0: a at 3 pixels, b at 3, both at 2 -> 2/4; class 1: 2/3; class 2: 2/3; classes 3, 4: absent -> 0
    assert inter.tolist() == [2, 2, 2, 0, 0] and union.tolist() == [4, 3, 3, 0, 0]
    assert agreement_score(inter, union) == pytest.approx((2 / 4 + 2 / 3 + 2 / 3) / 5)


class Constant(nn.Module):
    """A model predicting one class everywhere (a collapsed teacher), or pixel colours as classes (a 'good' one)."""

    def __init__(self, num_classes=4, collapsed=True):
        super().__init__()
        self.num_classes, self.collapsed = num_classes, collapsed
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        b, _, h, w = x.shape
        if self.collapsed:
            logits = torch.zeros(b, self.num_classes, h, w)
            logits[:, 0] = 20.0
        else:  # class = quantised red channel: diverse, confident, and stable under mild colour changes
            cls = (x[:, 0] * self.num_classes).long().clamp(max=self.num_classes - 1)
            logits = nn.functional.one_hot(cls, self.num_classes).permute(0, 3, 1, 2).float() * 8
        return {"logits": logits + 0 * self.w, "features": x}


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        red = torch.linspace(0.05, 0.95, 16).repeat(8, 1)  # a smooth ramp: every class present
        img = torch.stack([red, torch.rand(8, 16, generator=g), torch.rand(8, 16, generator=g)])
        return {"image": img, "label": torch.full((8, 16), 255)}


def test_collapse_wins_entropy_and_snd_but_loses_agreement_and_im():
    probe = ProbeSet(Images(), 4)
    bad = score_model(Constant(collapsed=True), probe, "cpu")
    good = score_model(Constant(collapsed=False), probe, "cpu")
    assert bad["entropy"] > good["entropy"] and bad["snd"] >= good["snd"]  # why neither is the default
    assert bad["agreement"] <= 1 / 4 + 1e-9 and good["agreement"] > bad["agreement"]
    assert good["im"] > bad["im"]
    again = score_model(Constant(collapsed=False), probe, "cpu")
    assert again == good  # the perturbation and the sampled pixels are fixed: same model, same score


def window(eff, src_eff, coverage=0.9, share=(0.97, 0.01, 0.01, 0.01), source=(0.4, 0.3, 0.2, 0.1)):
    return {
        "effective_classes": eff,
        "source_effective_classes": src_eff,
        "coverage": coverage,
        "per_class": {"share": list(share), "source_share": list(source)},
    }


def test_guard_diversity_coverage_and_score():
    names = ["road", "car", "person", "sign"]
    guard = CollapseGuard(ratio=0.5, vanish=0.1, coverage_drop=0.5, patience=3, min_drop=0.02)
    assert guard.check_window(10, window(3.5, 3.8, share=(0.4, 0.3, 0.2, 0.1)), names) == []
    fired = guard.check_window(20, window(1.2, 3.8), names)
    assert [s.kind for s in fired] == ["diversity"] and fired[0].iteration == 20
    assert fired[0].classes == ["car", "person", "sign"] and "road 97 %" in fired[0].message
    assert guard.check_window(30, window(1.1, 3.8), names) == []  # each kind once
    assert [s.kind for s in guard.check_window(40, window(3.5, 3.8, coverage=0.3), names)] == ["coverage"]
    for it, score in [(0, 0.50), (1, 0.52), (2, 0.51), (3, 0.505)]:
        assert guard.check_score(it, score) == []
    assert [s.kind for s in guard.check_score(4, 0.49)] == ["score"]  # three falls in a row, 0.03 below best
    state = guard.state_dict()
    other = CollapseGuard()
    other.load_state_dict(state)
    assert [s.kind for s in other.signs] == ["diversity", "coverage", "score"]


def test_guard_small_wobbles_stay_silent():
    guard = CollapseGuard(patience=3, min_drop=0.02)
    for it, score in enumerate([0.50, 0.60, 0.599, 0.598, 0.597, 0.62]):
        assert guard.check_score(it, score) == []  # falling three times but by less than min_drop


# ----------------------------------------------------------------------------- in the training loop
def one_class_checkpoint(path, cls: int = 0):
    """A source model that predicts class `cls` everywhere with certainty: the classifier ignores its features."""
    from udaseg.models import build_model

    torch.manual_seed(0)
    model = build_model("compact", num_classes=19, width=8)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.fill_(-20.0)
        model.classifier.bias[cls] = 20.0
    sd = model.state_dict()
    torch.save(
        {
            "model": sd,
            "teacher": sd,
            "iteration": 0,
            "model_spec": {"name": "compact", "num_classes": 19, "kwargs": {"width": 8}},
        },
        path,
    )
    return path


def rows_of(out, stage):
    import json

    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if json.loads(x)["stage"] == stage]


def test_a_collapsed_source_model_fires_the_warning(tmp_path, capsys):
    import json

    from tests.helpers import tiny_config
    from udaseg.train import train

    init = one_class_checkpoint(tmp_path / "one_class.pt")
    cfg = tiny_config("self_training", **{"train.warmup_iters": 0, "train.init": str(init), "train.eval_every": 1})
    train(cfg, tmp_path / "run")
    out = capsys.readouterr().out
    assert "POSSIBLE COLLAPSE at iteration 1 (diversity)" in out and "classes concerned: sidewalk, building" in out
    warnings = rows_of(tmp_path / "run", "warning")
    assert [w["kind"] for w in warnings] == ["diversity"] and "road 100 %" in warnings[0]["message"]
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["unsupervised"]["warnings"][0]["iteration"] == 1
    assert "collapse guard: 1 WARNING(S)" in out
    pseudo = rows_of(tmp_path / "run", "pseudo")
    assert [r["iter"] for r in pseudo] == [1, 2, 3] and pseudo[0]["effective_classes"] == pytest.approx(1.0)
    assert pseudo[0]["per_class"]["share"]["road"] == pytest.approx(1.0)
    assert "precision" in pseudo[0]["per_class"]  # the synthetic target has labels: monitoring only
    select = rows_of(tmp_path / "run", "select")
    assert [r["iter"] for r in select] == [0, 1, 2, 3] and all(r["agreement"] <= 1 / 19 + 1e-9 for r in select)
    assert (tmp_path / "run" / "best_unsupervised.pt").is_file() and (tmp_path / "run" / "pseudo_labels.png").is_file()


def test_rollback_ends_the_run_with_the_best_unsupervised_weights(tmp_path):
    from tests.helpers import tiny_config
    from udaseg.train import train

    init = one_class_checkpoint(tmp_path / "one_class.pt")
    cfg = tiny_config(
        "self_training",
        **{"train.warmup_iters": 0, "train.init": str(init), "train.eval_every": 1, "monitor.on_collapse": "rollback"},
    )
    result = train(cfg, tmp_path / "run")
    assert [r["iter"] for r in rows_of(tmp_path / "run", "adapt")] == [1]  # stopped after the first window
    best = torch.load(tmp_path / "run" / "best_unsupervised.pt", weights_only=True)
    final = torch.load(tmp_path / "run" / "final.pt", weights_only=True)
    assert all(torch.equal(best["teacher"][k], final["teacher"][k]) for k in best["teacher"])
    assert result["unsupervised"]["warnings"][0]["kind"] == "diversity"
    select = rows_of(tmp_path / "run", "select")
    criterion = select[0]["criterion"]
    best_iter = max(select, key=lambda r: r[criterion])["iter"]  # the first maximum, as the monitor keeps it
    assert result["unsupervised"]["stopped_at"] == 1 and result["unsupervised"]["rolled_back_to"] == best_iter


def test_a_resumed_run_rebuilds_the_monitor_from_its_metrics(tmp_path):
    from tests.helpers import tiny_config
    from udaseg.train import train

    init = one_class_checkpoint(tmp_path / "one_class.pt")
    cfg = tiny_config("self_training", **{"train.warmup_iters": 0, "train.init": str(init), "train.eval_every": 1})
    train(cfg, tmp_path / "run", stop_after=2)
    result = train(cfg, tmp_path / "run", resume=True)
    assert [w["kind"] for w in rows_of(tmp_path / "run", "warning")] == ["diversity"]  # not fired again
    assert [r["iter"] for r in rows_of(tmp_path / "run", "select")] == [0, 1, 2, 3]
    assert [e["iter"] for e in result["unsupervised"]["evaluations"]] == [0, 1, 2, 3]
