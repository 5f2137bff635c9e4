"""The loop's monitor: pseudo-label diagnostics, the label-free checkpoint score and the collapse guard together.

    run.monitor = Monitor.for_run(cfg, run, out)   # after start_run (metrics.jsonl already trimmed on resume)
    run.monitor.observe(step, target_batch)        # after train_step: on-device counts, no host sync
    run.monitor.flush(iteration, run.teacher)      # each log window: a "pseudo" row, change rate, guard
    run.monitor.evaluate(iteration, run)           # each evaluation point, after its labelled "eval" row if any
    if run.monitor.stop_requested: ...             # monitor.on_collapse = stop | rollback (every rank agrees)
    result["unsupervised"] = run.monitor.finish(iteration, run)   # rank 0: last score, summary, picture

`run` is the loop's state (engine/state.Run): the monitor reads run.teacher, run.student, run.config_dict and
run.model_spec. Rows it adds to metrics.jsonl: {"stage": "pseudo"} per window (diagnostics.PseudoLabelStats.flush
plus "change"), {"stage": "select"} per evaluation (every criterion, the labelled "miou" of that iteration's "eval"
row where there is one, "best"), and {"stage": "warning"} per collapse sign. Its state is rebuilt from those rows on
resume (metrics.jsonl is trimmed to the checkpoint first), so nothing of it goes into checkpoints. Target labels,
where the dataset has them, reach only the monitoring counts here, never a plug-in.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tqdm import tqdm

from udaseg import distributed as dist
from udaseg.checkpoint import save_checkpoint
from udaseg.engine.diagnostics import ProbeSet, PseudoLabelStats, change_rate, probe_labels
from udaseg.engine.log import append_jsonl
from udaseg.engine.selection import CRITERIA, CollapseGuard, Sign, score_model

BEST = "best_unsupervised.pt"
ON_COLLAPSE = ("warn", "stop", "rollback")


class Monitor:
    def __init__(self, cfg, out: Path, target_dataset, num_classes: int, class_names, device):
        m = cfg.monitor  # its values were checked by config.validate (CRITERIA, ON_COLLAPSE)
        self.cfg, self.out, self.device = m, Path(out), device
        self.enabled = m.enabled
        self.class_names = list(class_names)
        self.num_classes = num_classes
        self.stats = PseudoLabelStats(num_classes, m.confident, device)
        self.guard = CollapseGuard(m.collapse_ratio, m.vanish_ratio, m.coverage_drop, m.patience, m.min_drop)
        self._dataset, self._size = target_dataset, list(m.probe_size or cfg.data.target_resize or [])
        self._labelled = bool(getattr(target_dataset, "labelled", False))
        self._probe: ProbeSet | None = None
        self.previous: torch.Tensor | None = None  # probe class maps of the last window (change rate)
        self.evaluations: list[dict] = []  # the "select" rows so far
        self.stop_requested = False
        self.stopped_at: int | None = None  # iteration the collapse guard ended the run at (rank 0 knows it)
        self.rolled_back_to: int | None = None  # iteration of the weights monitor.on_collapse=rollback put back
        self.rows_path = self.out / "metrics.jsonl"
        if self.enabled:
            self._rebuild()

    @classmethod
    def for_run(cls, cfg, run, out: Path) -> Monitor:
        """The monitor of a training run: target train images for the probe set, classes from the model spec."""
        target = run.data.target.dataset  # the TrainView's underlying dataset: whole images
        names = getattr(target, "class_names", None) or [f"class_{i}" for i in range(run.model_spec["num_classes"])]
        return cls(cfg, out, target, run.model_spec["num_classes"], names, run.device)

    @property
    def probe(self) -> ProbeSet:
        if self._probe is None:  # loaded on first use, by the rank that scores (rank 0)
            self._probe = ProbeSet(self._dataset, self.cfg.probe_images, self._size)
        return self._probe

    def _rebuild(self) -> None:
        """State of a resumed run from its (trimmed) metrics.jsonl."""
        from udaseg.viz import read_jsonl

        for row in read_jsonl(self.rows_path):
            if row.get("stage") == "select":
                self.evaluations.append(row)
                self.guard.scores.append(row[self.cfg.criterion])
            elif row.get("stage") == "pseudo" and self.guard.first_coverage is None:
                self.guard.first_coverage = row.get("coverage")
            elif row.get("stage") == "warning":
                self.guard.signs.append(Sign(row["kind"], row["iter"], row["message"], row.get("classes", [])))

    # ------------------------------------------------------------------------- each step / window
    def observe(self, step, target_batch: dict | None = None) -> None:
        """After train_step: count the step's pseudo-labels (and, for monitoring only, the crops' labels)."""
        if not self.enabled:
            return
        # precision/recall only where the target split has labels (decided once: no host sync per step)
        label = target_batch.get("label") if self._labelled and target_batch is not None else None
        self.stats.add(step, label)

    def flush(self, iteration: int, teacher) -> None:
        """At log time: the window's pseudo row with the teacher's change rate on the probe set; the guard."""
        if not self.enabled:
            return
        row = self.stats.flush()
        fired: list[Sign] = []
        if row is not None and dist.is_main():
            maps = probe_labels(teacher, self.probe, self.device)
            if self.previous is not None:
                row["change"], row["per_class"]["change"] = change_rate(self.previous, maps, self.num_classes)
            self.previous = maps
            named = {k: dict(zip(self.class_names, v)) for k, v in row["per_class"].items()}  # lists -> by name
            append_jsonl(self.rows_path, {"iter": iteration, "stage": "pseudo", **row, "per_class": named})
            fired = self.guard.check_window(iteration, row, self.class_names)
        if row is not None:
            self._react(fired)

    # ------------------------------------------------------------------------- evaluation points
    def evaluate(self, iteration: int, run) -> None:
        """Score the teacher without labels, keep best_unsupervised.pt, check the score trend (all ranks call)."""
        if not self.enabled:
            return
        fired = self._score(iteration, run) if dist.is_main() else []
        dist.barrier()
        self._react(fired)

    def _labelled_miou(self, iteration: int) -> float | None:
        """The target mIoU the loop logged for this iteration (an "eval" row), if it evaluated with labels."""
        from udaseg.viz import read_jsonl

        rows = [r for r in read_jsonl(self.rows_path) if r.get("stage") == "eval" and r.get("iter") == iteration]
        return rows[-1].get("miou") if rows else None

    def _score(self, iteration: int, run) -> list[Sign]:
        if self.evaluations and self.evaluations[-1]["iter"] == iteration:
            return []  # already scored here (the end of the warm-up is also the start of adaptation)
        teacher, student, miou = run.teacher, run.student, self._labelled_miou(iteration)
        meta = {"config": run.config_dict, "model_spec": run.model_spec}
        scores = score_model(teacher, self.probe, self.device)
        key = self.cfg.criterion
        best = max((e[key] for e in self.evaluations), default=-math.inf)
        is_best = scores[key] > best
        if is_best:
            save_checkpoint(
                self.out / BEST,
                {
                    "teacher": teacher.state_dict(),
                    "model": student.state_dict(),
                    "iteration": iteration,
                    "config": meta.get("config", {}),
                    "model_spec": meta.get("model_spec", {}),
                    "selection": {"criterion": key, "score": scores[key]},
                },
            )
        row = {
            "iter": iteration,
            "stage": "select",
            **scores,
            "criterion": key,
            "best": is_best,
            "miou": None if miou is None or math.isnan(miou) else miou,
        }
        self.evaluations.append(row)
        append_jsonl(self.rows_path, row)
        tqdm.write(f"iteration {iteration}: label-free {key} {scores[key]:.4f}" + (" (best so far)" if is_best else ""))
        return self.guard.check_score(iteration, scores[key], key)

    def _react(self, fired: list[Sign]) -> None:
        """Warn loudly (rank 0) and agree on every rank whether to stop."""
        for sign in fired:
            append_jsonl(self.rows_path, {"iter": sign.iteration, "stage": "warning", **sign.as_dict()})
            tqdm.write(banner(sign, self.cfg.on_collapse))
        flag = torch.tensor([1.0 if fired and self.cfg.on_collapse != "warn" else 0.0])
        if bool(dist.broadcast_tensor(flag)[0] > 0) and not self.stop_requested:
            self.stop_requested, self.stopped_at = True, max(s.iteration for s in fired) if fired else None

    def rollback(self, teacher, student) -> int | None:
        """With monitor.on_collapse=rollback: put best_unsupervised.pt's weights back (every rank calls); returns its
        iteration (None with on_collapse=stop, or when no evaluation has written the file yet)."""
        if self.cfg.on_collapse != "rollback" or not (self.out / BEST).exists():
            return None
        from udaseg.checkpoint import load_checkpoint

        dist.barrier()
        payload = load_checkpoint(self.out / BEST)
        teacher.load_state_dict(payload["teacher"])
        student.load_state_dict(payload["model"])
        self.rolled_back_to = int(payload["iteration"])
        if dist.is_main():
            tqdm.write(f"rolled back to iteration {payload['iteration']}'s weights ({BEST})")
        return int(payload["iteration"])

    # ------------------------------------------------------------------------- the end
    def finish(self, iteration: int, run) -> dict:
        """Rank 0, after the final evaluation: the last score, pseudo_labels.png and the summary (printed, returned)."""
        if not self.enabled:
            return {}
        from udaseg import viz

        fired = self._score(iteration, run)
        for sign in fired:
            append_jsonl(self.rows_path, {"iter": sign.iteration, "stage": "warning", **sign.as_dict()})
            tqdm.write(banner(sign, self.cfg.on_collapse))
        viz.pseudo_labels(self.rows_path, self.out / "pseudo_labels.png")
        summary = summarize(self.evaluations, self.guard.signs, self.cfg.criterion, viz.read_jsonl(self.rows_path))
        summary["stopped_at"] = self.stopped_at
        summary["rolled_back_to"] = self.rolled_back_to
        print(summary_text(summary, self.class_names))
        return summary


def banner(sign: Sign, on_collapse: str) -> str:
    action = {
        "warn": "training continues (monitor.on_collapse=stop|rollback ends it)",
        "stop": "stopping the run here (monitor.on_collapse=stop)",
        "rollback": f"ending the run with {BEST}'s weights (monitor.on_collapse=rollback)",
    }[on_collapse]
    classes = f"\n!!   classes concerned: {', '.join(sign.classes)}" if sign.classes else ""
    bar = "!" * 100
    return (
        f"{bar}\n!!   POSSIBLE COLLAPSE at iteration {sign.iteration} ({sign.kind}): {sign.message}{classes}\n"
        f"!!   {action}; {BEST} holds the best checkpoint by the label-free score (docs/trust.md)\n{bar}"
    )


def summarize(evaluations: list[dict], signs: list[Sign], criterion: str, rows: list[dict]) -> dict:
    """final.json's "unsupervised" section: the evaluations, the selected one, the first and last, warnings."""
    if not evaluations:
        return {"criterion": criterion, "evaluations": [], "warnings": [s.as_dict() for s in signs]}
    best = max(evaluations, key=lambda e: e[criterion])
    first, last = evaluations[0], evaluations[-1]
    pseudo = [r for r in rows if r.get("stage") == "pseudo"]
    return {
        "criterion": criterion,
        "selected_iteration": best["iter"],
        "selected_score": best[criterion],
        "selected_miou": best.get("miou"),
        "first_iteration": first["iter"],
        "first_score": first[criterion],
        "first_miou": first.get("miou"),
        "last_iteration": last["iter"],
        "last_score": last[criterion],
        "last_miou": last.get("miou"),
        "evaluations": [{k: e.get(k) for k in ("iter", *CRITERIA, "miou")} for e in evaluations],
        "warnings": [s.as_dict() for s in signs],
        "last_window": pseudo[-1] if pseudo else None,
    }


def summary_text(s: dict, class_names: list[str]) -> str:
    """The end-of-run report: was adaptation worth it by the label-free score, warnings, last pseudo-label window."""
    lines = [f"\nlabel-free checkpoint score ({s['criterion']}, higher is better; docs/trust.md)"]
    if s.get("evaluations"):
        lines.append(f"{'iteration':>10} " + " ".join(f"{c:>10}" for c in CRITERIA) + f" {'target mIoU':>12}")
        for e in s["evaluations"]:
            mark = "  <- selected" if e["iter"] == s["selected_iteration"] else ""
            miou = "—" if e.get("miou") is None else f"{e['miou']:.2f}"
            lines.append(f"{e['iter']:>10} " + " ".join(f"{e[c]:>10.4f}" for c in CRITERIA) + f" {miou:>12}{mark}")
        delta = s["last_score"] - s["first_score"]
        verdict = (
            "adaptation raised the label-free score"
            if delta > 0
            else "ADAPTATION LOWERED THE LABEL-FREE SCORE: prefer the start's weights"
        )
        lines.append(
            f"{verdict}: {s['first_score']:.4f} at iteration {s['first_iteration']} -> {s['last_score']:.4f} "
            f"at {s['last_iteration']}; {BEST} = iteration {s['selected_iteration']}"
        )
    warnings = s.get("warnings", [])
    lines.append("collapse guard: " + ("silent" if not warnings else f"{len(warnings)} WARNING(S)"))
    for w in warnings:
        extra = f" [{', '.join(w['classes'])}]" if w["classes"] else ""
        lines.append(f"  ! iteration {w['iteration']} ({w['kind']}): {w['message']}{extra}")
    last = s.get("last_window")
    if last:
        lines.append(
            f"pseudo-labels, last window (iteration {last['iter']}): "
            f"coverage {_num(last['coverage'], 100)} %, {_num(last['effective_classes'])} effective classes "
            f"(source labels "
            f"{_num(last['source_effective_classes'])}), change on the probe set "
            f"{_num(last.get('change'), 100)} %"
        )
    return "\n".join(lines)


def _num(value: float | None, scale: float = 1.0) -> str:
    """A number for the summary; '—' for a missing one (JSON null, NaN)."""
    return "—" if value is None or math.isnan(value) else f"{scale * value:.1f}"
