"""The run's evaluations and reports: the teacher on the target val set, the "before" record at the end of the
warm-up, and the end of the run (final.json, final.pt, pictures, the before/after table). Rank 0 evaluates."""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from udaseg import distributed as dist
from udaseg import viz
from udaseg.checkpoint import save_checkpoint
from udaseg.config import Config
from udaseg.engine.log import append_jsonl
from udaseg.engine.state import Run, Stage, checkpoint_payload, elapsed, peak_memory_mb
from udaseg.evaluate import evaluate, format_table
from udaseg.fileio import write_json


def eval_teacher(run: Run, cfg: Config, full: bool) -> dict:
    val = run.data.val
    cap = cfg.train.eval_max_images
    if not full and 0 < cap < len(val):
        val = torch.utils.data.Subset(val, range(cap))
    return evaluate(
        run.teacher, val, protocol=cfg.data.protocol, device=run.device, progress=False, batch_size=cfg.data.batch_size
    )


def record_before(run: Run, cfg: Config, out: Path, iteration: int) -> None:
    """Target mIoU and sample predictions of the teacher before adaptation (end of the warm-up).

    Rank 0 evaluates; every rank records that it happened (the flag decides a barrier, so all must agree).
    """
    run.history.before_recorded = True
    if dist.is_main() and run.data.val is not None:
        result = eval_teacher(run, cfg, full=True)
        run.history.before = result
        run.history.before_samples = viz.sample_predictions(run.teacher, run.data.val, cfg.train.samples, run.device)
        append_jsonl(out / "metrics.jsonl", {"iter": iteration, "stage": "eval", "miou": result["miou"]})
        tqdm.write(f"before adaptation: target mIoU {result['miou']:.2f}")
    dist.barrier()
    run.monitor.evaluate(iteration, run)


def finish(run: Run, cfg: Config, stages: list[Stage], out: Path) -> dict:
    """Final evaluation, final.json / final.pt, pictures and the before/after table."""
    result: dict = {}
    if dist.is_main():
        end = stages[-1].end
        after = eval_teacher(run, cfg, full=True) if run.data.val is not None else None
        if after:
            append_jsonl(out / "metrics.jsonl", {"iter": end, "stage": "eval", "miou": after["miou"]})
        before = run.history.before
        result = {
            "miou": after["miou"] if after else None,
            "per_class": after["per_class"] if after else None,
            "protocol": cfg.data.protocol,
            "method": cfg.train.method,
            "iterations": end,
            "before": before,
            "evaluated": after is not None,
            "wall_time_s": elapsed(run),
            "peak_memory_mb": peak_memory_mb(run.device),
        }
        result["unsupervised"] = run.monitor.finish(end, run)  # selection, collapse warnings, pseudo_labels.png
        write_json(out / "final.json", result)
        payload = checkpoint_payload(run, end)
        save_checkpoint(
            out / "final.pt", {k: payload[k] for k in ("teacher", "model", "config", "model_spec", "iteration")}
        )
        viz.curves(out / "metrics.jsonl", out / "curves.png")
        if after:
            after_samples = viz.sample_predictions(run.teacher, run.data.val, cfg.train.samples, run.device)
            viz.samples(run.data.val, run.history.before_samples, after_samples, out / "samples.png")
            print(summary_table(before, after, stages, cfg))
        else:
            print(f"trained {end} iterations without evaluation (train.evaluate=false / --no-eval)")
        print(f"run folder: {out}  (final.json, final.pt, metrics.jsonl, curves.png{', samples.png' if after else ''})")
    dist.barrier()
    return result


def summary_table(before: dict | None, after: dict, stages: list[Stage], cfg: Config) -> str:
    lines = [format_table(after, before=before)]
    head = f"target mIoU ({cfg.data.protocol} classes)"
    lines.append(f"\n{'':<34}{head}")
    if before:
        start = (
            f"{stages[0].spec} warm-up"
            if stages[0].name == "warmup"
            else f"from {Path(cfg.train.init).name}"
            if cfg.train.init
            else "initial weights"
        )
        lines.append(f"{'before: ' + start:<34}{before['miou']:>8.2f}")
    delta = f"  ({after['miou'] - before['miou']:+.2f})" if before else ""
    lines.append(f"{'after: ' + cfg.train.method:<34}{after['miou']:>8.2f}{delta}")
    return "\n".join(lines)
