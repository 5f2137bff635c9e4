"""Train a segmentation model on a labelled source domain and adapt it to an unlabelled target domain.

    python -m udaseg.train                                   # embedded synthetic benchmark, CPU, minutes
    python -m udaseg.train --method dida+cpsl --iters 2000   # plug-ins compose with '+'
    python -m udaseg.train --config configs/gta2cs_self_training.yaml \
        --source gta5:data/gta --target cityscapes:data/cityscapes
    python -m udaseg.train --out runs/demo --resume           # continue a stopped run where it stopped
    torchrun --nproc_per_node 2 -m udaseg.train ...           # data parallel (gloo on CPU, NCCL on GPU)

Two stages share one iteration counter: a warm-up on source data (`train.warmup`, source_only by default), then
adaptation with the plug-ins of `train.method`. The target mIoU of the teacher at the end of the warm-up
("before") and at the end ("after") is printed as a table and written to the run folder:
config.yaml, metrics.jsonl, last.pt (resumable), final.pt (deployable), final.json, curves.png, samples.png.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import math
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from udaseg import distributed as dist
from udaseg import viz
from udaseg.checkpoint import save_checkpoint
from udaseg.config import Config, ConfigError, load_config, save_config, to_dict
from udaseg.data import build_dataset
from udaseg.data.labels import IGNORE_INDEX
from udaseg.engine import data as D
from udaseg.engine import optim as O
from udaseg.engine.log import MetricLog, append_jsonl, trim_jsonl
from udaseg.engine.state import checkpoint_payload, elapsed, init_weights, peak_memory_mb, restore
from udaseg.evaluate import evaluate, format_table
from udaseg.methods import Step, build_methods
from udaseg.methods.base import Method, resolved_options
from udaseg.models import build_model

WARMUP_ALIASES = {"diga": "diga_warmup"}  # --warmup diga runs DiGA's symmetric-distillation plug-in


class NonFiniteLoss(RuntimeError):
    """Raised after too many consecutive steps with a NaN/inf loss."""


# ----------------------------------------------------------------------------- set-up
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available")
    return torch.device(name)


def build_data(cfg: Config, out: Path, rank: int) -> dict[str, Any]:
    """Source/target training views, the validation set and the rare-class sampling tables."""
    d = cfg.data

    def dataset(spec: str, split: str, role: str):
        options = d.synthetic if spec.split(":")[0].startswith("synthetic") else {}
        return build_dataset(spec, split=split, role=role, **options)

    source = dataset(d.source, "train", "source")
    target = dataset(d.target, "train", "target")
    val = dataset(d.val or d.target, d.val_split, "target")
    rcs = None
    if d.rcs:
        from udaseg.data.rcs import class_stats

        counts = class_stats(source, cache_dir=out / "cache")  # (N, C), computed once, cached in the run folder
        rcs = D.rcs_tables(counts, d.rcs_temperature, d.rcs_min_pixels)
    view = dict(crop=d.crop, scale_range=d.scale_range, flip=True)
    return {
        "source": D.TrainView(source, resize=d.source_resize, min_class_pixels=d.rcs_min_pixels, **view),
        "target": D.TrainView(target, resize=d.target_resize, **view),
        "val": val,
        "rcs": rcs,
    }


def streams(cfg: Config, data: dict, start: int, end: int, rank: int, pin: bool, target: bool):
    """Batches for iterations [start, end): a pure function of (seed, iteration, rank), so resume is exact.

    Without `target` (a source-only stage) the target stream yields None and loads nothing.
    """
    d, seed = cfg.data, cfg.train.seed
    probs, images = data["rcs"] if data["rcs"] else (None, None)
    src = D.StepSampler(len(data["source"]), d.batch_size, start, end, seed, D.SOURCE_STREAM, rank, probs, images)
    tgt = D.StepSampler(len(data["target"]), d.batch_size, start, end, seed, D.TARGET_STREAM, rank)
    target_stream = D.loader(data["target"], tgt, d.workers, pin) if target else itertools.repeat(None)
    return D.loader(data["source"], src, d.workers, pin), target_stream


def build_stages(cfg: Config, num_classes: int, feature_dim: int, device) -> list[dict]:
    """[(name, first iteration, last iteration + 1, plug-ins)] of the warm-up and adaptation stages."""
    t = cfg.train
    warm = WARMUP_ALIASES.get(t.warmup, t.warmup)
    stages = []
    if t.warmup_iters > 0:
        methods = build_methods(warm, cfg.methods, num_classes, feature_dim, device)
        stages.append({"name": "warmup", "start": 0, "end": t.warmup_iters, "methods": methods, "spec": t.warmup})
    methods = build_methods(t.method, cfg.methods, num_classes, feature_dim, device)
    stages.append({"name": "adapt", "start": t.warmup_iters, "end": t.warmup_iters + t.iters, "methods": methods,
                   "spec": t.method})
    return stages


def all_methods(stages: list[dict]) -> dict[str, Method]:
    return {m.name: m for s in stages for m in s["methods"]}


# ----------------------------------------------------------------------------- one step
def teacher_predict(step: Step) -> dict[str, torch.Tensor]:
    """Teacher logits/probabilities at image resolution and its decoder features, without gradients."""
    step.teacher.eval()
    with torch.no_grad():
        out = step.forward(step.teacher, step.target_image)
    return {**out, "probs": out["logits"].softmax(1), "features": out["features"].float()}


def train_step(step: Step, methods: list[Method]) -> dict[str, torch.Tensor]:
    """Hooks in order (methods/base.py): pseudo-labels, mix, student forward, losses. Returns the loss terms."""
    needs_target = any(m.needs_target for m in methods) and step.target_image is not None
    if needs_target:
        step.teacher_target = teacher_predict(step)
        for m in methods:
            m.pseudo_labels(step)
        for m in methods:
            m.mix(step)
    step.student.train()
    step.student_source = step.forward(step.student, step.source_image)
    losses = {"source_ce": F.cross_entropy(step.student_source["logits"], step.source_label, ignore_index=IGNORE_INDEX)}
    if needs_target and step.mix_image is not None:
        step.student_mix = step.forward(step.student, step.mix_image)
    for m in methods:
        for name, value in m.losses(step).items():
            losses[f"{m.name}/{name}" if name in losses else name] = value
    return losses


def step_generator(seed: int, iteration: int, rank: int) -> torch.Generator:
    """The step's random stream (mask sampling, strong views): a pure function of (seed, iteration, rank)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0]))


def finite_or_report(losses: dict[str, torch.Tensor], iteration: int) -> bool:
    """Whether every loss term is finite: one host sync per step (the skip decision needs it), not one per term."""
    values = torch.stack([v.detach().float() for v in losses.values()])
    if bool(torch.isfinite(values).all()):
        return True
    bad = {k: float(v) for k, v in zip(losses, values.tolist()) if not torch.isfinite(torch.tensor(v))}
    tqdm.write(f"iteration {iteration}: non-finite loss {bad}; step skipped, weights untouched")
    return False


# ----------------------------------------------------------------------------- state
class StopFlag:
    """SIGINT/SIGTERM finish the current step, write last.pt and return: nothing is lost."""

    def __init__(self):
        self.set = False

    def __call__(self, signum, frame):
        if self.set:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        self.set = True
        tqdm.write("stopping after this step; last.pt will hold the run (resume with --resume)")


# ----------------------------------------------------------------------------- evaluation
def eval_teacher(run: dict, cfg: Config, full: bool) -> dict:
    val = run["data"]["val"]
    cap = cfg.train.eval_max_images
    if not full and 0 < cap < len(val):
        val = torch.utils.data.Subset(val, range(cap))
    return evaluate(run["teacher"], val, protocol=cfg.data.protocol, device=run["device"], progress=False,
                    batch_size=cfg.data.batch_size)


# ----------------------------------------------------------------------------- the run
def train(cfg: Config, out: str | Path, resume: bool = False, stop_after: int | None = None,
          state_out: dict | None = None) -> dict:
    """Run both stages; returns final.json's content (on rank 0).

    `stop_after` stops (with a checkpoint) after that many steps; `state_out`, if given, receives this process's
    final model, teacher and method state (tests compare them across DDP ranks).
    """
    out = Path(out)
    device = pick_device(cfg.train.device)
    rank, world = dist.init(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    if dist.is_main():
        out.mkdir(parents=True, exist_ok=True)
    dist.barrier()
    data = build_data(cfg, out, rank)
    num_classes = data["val"].num_classes
    spec = {"name": cfg.model.name, "num_classes": num_classes, "kwargs": dict(cfg.model.kwargs)}
    student = build_model(cfg.model.name, num_classes=num_classes, pretrained=cfg.model.pretrained or None,
                          **cfg.model.kwargs).to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        student = student.to(memory_format=torch.channels_last)
    teacher = copy.deepcopy(student).requires_grad_(False)
    stages = build_stages(cfg, num_classes, student.feature_dim, device)
    methods = all_methods(stages)
    heads = {f"{n}.{k}": mod.to(device) for n, m in methods.items() for k, mod in m.modules().items()}
    optimizer = O.build_optimizer(O.param_groups(student, heads, cfg.optim), cfg.optim)
    cfg.methods = {**cfg.methods, **resolved_options(list(methods.values()))}
    run = {"student": student, "teacher": teacher, "optimizer": optimizer, "heads": heads, "methods": methods,
           "data": data, "device": device, "model_spec": spec, "config_dict": to_dict(cfg), "history": {},
           "t0": time.perf_counter()}
    start = 0
    if cfg.train.init and not (resume and (out / "last.pt").exists()):
        init_weights(run, cfg.train.init)
    if resume and (out / "last.pt").exists():
        start = restore(run, out / "last.pt")
        if dist.is_main():
            print(f"resumed {out / 'last.pt'} at iteration {start}")
    elif resume:
        print(f"--resume: no {out / 'last.pt'} yet, starting from the beginning")
    if dist.is_main():
        save_config(cfg, out / "config.yaml")
        trim_jsonl(out / "metrics.jsonl", start)
    dist.broadcast_module(student)
    dist.broadcast_module(teacher)
    loop(run, cfg, stages, out, start, stop_after)
    if state_out is not None:
        state_out.update(model=student.state_dict(), teacher=teacher.state_dict(),
                         methods={k: m.state_dict() for k, m in methods.items()})
    return finish(run, cfg, stages, out) if run.get("done") else {}


def amp_context(cfg: Config, device: torch.device):
    if device.type == "cuda" and cfg.train.amp:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return lambda: torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext


def optimize(run: dict, cfg: Config, losses: dict[str, torch.Tensor], params: list, it: int) -> float:
    """Backward, gradient averaging across ranks, clipping, optimizer step; returns the gradient norm.

    A non-finite loss skips the step (weights untouched); ten in a row stop the run.
    """
    run["optimizer"].zero_grad(set_to_none=True)
    if not finite_or_report(losses, it):
        run["bad_in_a_row"] = run.get("bad_in_a_row", 0) + 1
        if run["bad_in_a_row"] >= 10:
            raise NonFiniteLoss(f"10 consecutive non-finite losses up to iteration {it}: lower optim.lr "
                                f"or check the data; last.pt still holds the weights before them")
        return math.nan
    run["bad_in_a_row"] = 0
    losses["total"].backward()
    dist.average_gradients(params)
    gnorm = O.grad_norm_clip(params, cfg.optim.grad_clip)
    run["optimizer"].step()
    return gnorm


@torch.no_grad()
def update_state(run: dict, cfg: Config, step: Step, methods: list[Method]) -> None:
    """After the optimizer: one set of BatchNorm statistics on all ranks, the EMA teacher, the plug-ins' state."""
    dist.broadcast_module(run["student"], buffers_only=True)  # before the EMA reads them
    O.ema_update(run["teacher"], run["student"], cfg.train.ema, step.iteration)
    for m in methods:
        m.update(step)
    for m in methods:
        m.sync_state()


def make_step(run: dict, cfg: Config, it: int, src: dict, tgt: dict | None, amp) -> Step:
    device = run["device"]
    return Step(iteration=it, source_image=src["image"].to(device, non_blocking=True),
                source_label=src["label"].to(device, non_blocking=True),
                target_image=None if tgt is None else tgt["image"].to(device, non_blocking=True),
                generator=step_generator(cfg.train.seed, it, dist.rank()),
                student=run["student"], teacher=run["teacher"], amp=amp)


def loop(run: dict, cfg: Config, stages: list[dict], out: Path, start: int, stop_after: int | None) -> None:
    """Both stages from iteration `start`; sets run["done"] unless stopped (signal or `stop_after`)."""
    from udaseg.kernels import use_impl

    t, device = cfg.train, run["device"]
    amp = amp_context(cfg, device)
    params = [p for g in run["optimizer"].param_groups for p in g["params"]]
    stop = StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)} if dist.is_main() else {}
    bar = tqdm(total=stages[-1]["end"], initial=start, disable=not dist.is_main(), dynamic_ncols=True, desc="train")
    log = MetricLog(out / "metrics.jsonl", cfg.data.batch_size * dist.world_size())
    try:
        with use_impl(t.kernels):
            for stage in stages:
                if start >= stage["end"]:
                    continue
                begin, methods = max(start, stage["start"]), stage["methods"]
                src_it, tgt_it = streams(cfg, run["data"], begin, stage["end"], dist.rank(), device.type == "cuda",
                                         target=any(m.uses_target_images for m in methods))
                if stage["name"] == "adapt" and not run["history"].get("before_recorded"):
                    record_before(run, cfg, out, begin)  # no warm-up stage in this run: "before" = initial model
                for it in range(begin, stage["end"]):
                    src, tgt = next(src_it), next(tgt_it)
                    lr = O.set_lr(run["optimizer"], O.lr_factor(it - stage["start"], stage["end"] - stage["start"],
                                                              cfg.optim.warmup_iters, cfg.optim.poly_power))
                    step = make_step(run, cfg, it, src, tgt, amp)
                    losses = train_step(step, methods)
                    losses["total"] = sum(losses.values())
                    gnorm = optimize(run, cfg, losses, params, it)
                    update_state(run, cfg, step, methods)
                    bar.update(1)
                    log.add(losses, step.metrics)
                    if (it + 1) % t.log_every == 0 or it + 1 == stage["end"]:
                        row = log.flush(it + 1, stage["name"], lr, gnorm, domains=1 + (tgt is not None))
                        bar.set_postfix(loss=f"{row['total']:.3f}", it_s=f"{row['it_per_s']:.2f}", refresh=False)
                    after_step(run, cfg, stage, it, out, stages)
                    if stop.set or (stop_after is not None and log.steps >= stop_after):
                        save(run, out, it + 1)
                        return
        run["done"] = True
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)


def after_step(run: dict, cfg: Config, stage: dict, it: int, out: Path, stages: list[dict]) -> None:
    """Evaluations and checkpoints due after iteration `it`."""
    t, n = cfg.train, it + 1
    end_of_stage = n == stage["end"]
    if stage["name"] == "warmup" and end_of_stage:
        record_before(run, cfg, out, n)
    elif stage["name"] == "adapt" and t.eval_every and n % t.eval_every == 0 and not end_of_stage:
        result = eval_teacher(run, cfg, full=False) if dist.is_main() else None
        if result:
            append_jsonl(out / "metrics.jsonl", {"iter": n, "stage": "eval", "miou": result["miou"]})
            tqdm.write(f"iteration {n}: target mIoU {result['miou']:.2f}")
        dist.barrier()
    if (t.ckpt_every and n % t.ckpt_every == 0) or end_of_stage:
        save(run, out, n)


def record_before(run: dict, cfg: Config, out: Path, iteration: int) -> None:
    """Target mIoU and sample predictions of the teacher before adaptation (end of the warm-up).

    Rank 0 evaluates; every rank records that it happened (the flag decides a barrier, so all must agree).
    """
    run["history"]["before_recorded"] = True
    if dist.is_main():
        result = eval_teacher(run, cfg, full=True)
        run["history"]["before"] = result
        run["history"]["before_samples"] = viz.sample_predictions(run["teacher"], run["data"]["val"],
                                                                  cfg.train.samples, run["device"])
        append_jsonl(out / "metrics.jsonl", {"iter": iteration, "stage": "eval", "miou": result["miou"]})
        tqdm.write(f"before adaptation: target mIoU {result['miou']:.2f}")
    dist.barrier()


def save(run: dict, out: Path, iteration: int) -> None:
    if dist.is_main():
        save_checkpoint(out / "last.pt", checkpoint_payload(run, iteration))
    dist.barrier()


def finish(run: dict, cfg: Config, stages: list[dict], out: Path) -> dict:
    """Final evaluation, final.json / final.pt, pictures and the before/after table."""
    result: dict = {}
    if dist.is_main():
        after = eval_teacher(run, cfg, full=True)
        append_jsonl(out / "metrics.jsonl", {"iter": stages[-1]["end"], "stage": "eval", "miou": after["miou"]})
        before = run["history"].get("before")
        result = {"miou": after["miou"], "per_class": after["per_class"], "protocol": cfg.data.protocol,
                  "method": cfg.train.method, "iterations": stages[-1]["end"], "before": before,
                  "wall_time_s": elapsed(run), "peak_memory_mb": peak_memory_mb(run["device"])}
        (out / "final.json").write_text(json.dumps(result, indent=2))
        payload = checkpoint_payload(run, stages[-1]["end"])
        save_checkpoint(out / "final.pt", {k: payload[k] for k in ("teacher", "model", "config", "model_spec",
                                                                   "iteration")})
        viz.curves(out / "metrics.jsonl", out / "curves.png")
        after_samples = viz.sample_predictions(run["teacher"], run["data"]["val"], cfg.train.samples, run["device"])
        viz.samples(run["data"]["val"], run["history"].get("before_samples"), after_samples, out / "samples.png")
        print(summary_table(before, after, stages, cfg))
        print(f"run folder: {out}  (final.json, final.pt, metrics.jsonl, curves.png, samples.png)")
    dist.barrier()
    return result


def summary_table(before: dict | None, after: dict, stages: list[dict], cfg: Config) -> str:
    lines = [format_table(after, before=before)]
    head = f"target mIoU ({cfg.data.protocol} classes)"
    lines.append(f"\n{'':<34}{head}")
    if before:
        start = (f"{stages[0]['spec']} warm-up" if stages[0]["name"] == "warmup"
                 else f"from {Path(cfg.train.init).name}" if cfg.train.init else "initial weights")
        lines.append(f"{'before: ' + start:<34}{before['miou']:>8.2f}")
    delta = f"  ({after['miou'] - before['miou']:+.2f})" if before else ""
    lines.append(f"{'after: ' + cfg.train.method:<34}{after['miou']:>8.2f}{delta}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m udaseg.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="YAML file of values that differ from the defaults (udaseg/config.py)")
    p.add_argument("--source", help="labelled source NAME[:ROOT]: gta5, synthia, cityscapes, folder, synthetic")
    p.add_argument("--target", help="unlabelled target dataset NAME[:ROOT]")
    p.add_argument("--method", help="plug-ins joined by '+': source_only, self_training, dida, cpsl, ...")
    p.add_argument("--warmup", help="warm-up stage: source_only or diga")
    p.add_argument("--iters", type=int, help="adaptation iterations")
    p.add_argument("--warmup-iters", type=int, help="warm-up iterations")
    p.add_argument("--kernels", choices=["auto", "triton", "torch"], help="udaseg.kernels implementation")
    p.add_argument("--device", help="auto, cpu or cuda")
    p.add_argument("--seed", type=int)
    p.add_argument("--out", help="run folder (default runs/<method>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=3e-4")
    return p.parse_args(argv)


CONFIGS = Path(__file__).parent / "configs"


def shipped_config(name: str) -> Path:
    """A config path as given, or the name of one shipped in udaseg/configs (gta2cs_dida -> .../gta2cs_dida.yaml)."""
    path = Path(name)
    if path.exists() or path.suffix:
        return path
    shipped = CONFIGS / f"{name}.yaml"
    if not shipped.exists():
        names = ", ".join(sorted(p.stem for p in CONFIGS.glob("*.yaml")))
        raise ConfigError(f"--config {name}: no such file, and no shipped config of that name (shipped: {names})")
    return shipped


FLAG_KEYS = {"source": "data.source", "target": "data.target", "method": "train.method", "warmup": "train.warmup",
             "iters": "train.iters", "warmup_iters": "train.warmup_iters", "kernels": "train.kernels",
             "device": "train.device", "seed": "train.seed"}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    flags = [f"{key}={getattr(args, name)}" for name, key in FLAG_KEYS.items() if getattr(args, name) is not None]
    try:
        config_file = shipped_config(args.config) if args.config else None
        if args.resume and not config_file and args.out and (Path(args.out) / "config.yaml").exists():
            config_file = Path(args.out) / "config.yaml"  # resume with the run's own resolved config
        cfg = load_config(config_file, flags + args.set)
        out = Path(args.out or f"runs/{cfg.train.method.replace('+', '-')}-{time.strftime('%Y%m%d-%H%M%S')}")
        train(cfg, out, resume=args.resume)
    except (ConfigError, ValueError, FileNotFoundError, NonFiniteLoss) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        dist.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
