"""Train a segmentation model on a labelled source domain and adapt it to an unlabelled target domain.

    python -m udaseg.train                                   # embedded synthetic benchmark, CPU, minutes
    python -m udaseg.train --method dida+cpsl --iters 2000   # plug-ins compose with '+'
    python -m udaseg.train --config gta2cs_self_training \
        --source gta5:data/gta --target cityscapes:data/cityscapes
    python -m udaseg.train --out runs/demo --resume           # continue a stopped run where it stopped
    python -m udaseg.train --check-data ...                   # check every input pair, print a summary, exit
    torchrun --nproc_per_node 2 -m udaseg.train ...           # data parallel (gloo on CPU, NCCL on GPU)

Two stages share one iteration counter: a warm-up on source data (`train.warmup`, source_only by default), then
adaptation with the plug-ins of `train.method`. The target mIoU of the teacher at the end of the warm-up
("before") and at the end ("after") is printed as a table and written to the run folder:
config.yaml, metrics.jsonl, last.pt (resumable), final.pt (deployable), final.json, curves.png, samples.png.

Before the first iteration every input pair (source, target, val) is read once and checked; a run folder holding
another run is refused (--resume continues it, --overwrite replaces it). SIGINT/SIGTERM on any rank stop every
rank after the same step with last.pt written; torchrun --max-restarts continues from last.pt by itself.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from udaseg import distributed as dist
from udaseg.checkpoint import save_checkpoint
from udaseg.cli import run_cli
from udaseg.config import Config, ConfigError, load_config, save_config, to_dict, validate
from udaseg.data.labels import IGNORE_INDEX
from udaseg.engine import folder
from udaseg.engine import optim as O
from udaseg.engine.feature_distance import FeatureDistance
from udaseg.engine.inputs import build_data, build_datasets, check_inputs, streams
from udaseg.engine.log import MetricLog, append_jsonl, trim_jsonl
from udaseg.engine.monitor import Monitor
from udaseg.engine.report import eval_teacher, finish, record_before
from udaseg.engine.state import (
    Run,
    Stage,
    TrainData,
    checkpoint_payload,
    init_weights,
    non_finite,
    restore,
    restore_buffers,
    snapshot_buffers,
)
from udaseg.engine.stop import StopFlag, step_flags
from udaseg.fileio import UserError
from udaseg.methods import Step, build_methods, resolve_warmup
from udaseg.methods.base import Method, resolved_options
from udaseg.models import build_model

MAX_BAD_STEPS = 10  # consecutive skipped steps (non-finite loss or gradient) that stop the run


class NonFiniteLoss(UserError, RuntimeError):
    """Raised after MAX_BAD_STEPS consecutive steps with a NaN/inf loss or gradient."""


# ----------------------------------------------------------------------------- set-up
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but no CUDA device is available")
    return torch.device(name)


def build_stages(cfg: Config, num_classes: int, feature_dim: int, device) -> list[Stage]:
    """The warm-up stage (if any) and the adaptation stage, each with its plug-ins."""
    t = cfg.train
    stages = []
    if t.warmup_iters > 0:
        methods = build_methods(resolve_warmup(t.warmup), cfg.methods, num_classes, feature_dim, device)
        stages.append(Stage("warmup", 0, t.warmup_iters, methods, t.warmup))
    methods = build_methods(t.method, cfg.methods, num_classes, feature_dim, device)
    stages.append(Stage("adapt", t.warmup_iters, t.warmup_iters + t.iters, methods, t.method))
    return stages


def all_methods(stages: list[Stage]) -> dict[str, Method]:
    return {m.name: m for s in stages for m in s.methods}


# ----------------------------------------------------------------------------- one step
def teacher_predict(step: Step) -> dict[str, torch.Tensor]:
    """Teacher logits/probabilities at image resolution and its decoder features, without gradients."""
    step.teacher.eval()
    with torch.no_grad():
        out = step.forward(step.teacher, step.target_image)
    return {**out, "probs": out["logits"].softmax(1), "features": out["features"].float()}


def train_step(step: Step, methods: list[Method], feature_distance: FeatureDistance | None = None) -> dict:
    """Hooks in order (methods/base.py): pseudo-labels, mix, student forward, losses. Returns the loss terms:
    the loop's own `source_ce` (and `feature_distance` when on), and each plug-in's terms as `<plug-in>/<term>`."""
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
    if feature_distance is not None:
        losses["feature_distance"] = feature_distance.loss(
            step.student_source["encoder"], step.source_image, step.source_label, step.amp
        )
    if needs_target and step.mix_image is not None:
        step.student_mix = step.forward(step.student, step.mix_image)
    for m in methods:
        losses.update({f"{m.name}/{name}": value for name, value in m.losses(step).items()})
    return losses


def step_generator(seed: int, iteration: int, rank: int) -> torch.Generator:
    """The step's random stream (mask sampling, strong views): a pure function of (seed, iteration, rank)."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, iteration, rank]).generate_state(1)[0]))


# ----------------------------------------------------------------------------- the run
def train(
    cfg: Config,
    out: str | Path,
    resume: bool = False,
    stop_after: int | None = None,
    state_out: dict | None = None,
    overwrite: bool = False,
) -> dict:
    """Run both stages; returns final.json's content (on rank 0; {} when stopped early).

    `cfg` is not modified (the run works on a copy). `resume` continues the run in `out`; `overwrite` replaces the
    run `out` holds; without either, a folder holding a run is refused. `stop_after` stops (with a checkpoint)
    after that many steps; `state_out`, if given, receives this process's final model, teacher, method state and
    iteration (tests compare them across DDP ranks).
    """
    cfg = validate(copy.deepcopy(cfg))
    out = Path(out)
    if dist.restarted():  # torchrun --max-restarts after a failed worker: continue from last.pt
        resume, overwrite = True, False
    device = pick_device(cfg.train.device)
    dist.init(device)
    device = dist.local_device(device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
    dist.on_main(lambda: folder.claim(out, resume, overwrite))
    datasets = build_datasets(cfg)
    reports = dist.on_main(lambda: check_inputs(datasets))
    run, stages = build_run(cfg, build_data(cfg, datasets, out, reports), device)
    start_run(run, cfg, out, resume)
    run.monitor = Monitor.for_run(cfg, run, out)  # pseudo-label diagnostics, label-free selection (docs/trust.md)
    dist.broadcast_module(run.student)
    dist.broadcast_module(run.teacher)
    loop(run, cfg, stages, out, stop_after)
    if state_out is not None:
        state_out.update(
            model=run.student.state_dict(),
            teacher=run.teacher.state_dict(),
            methods={k: m.state_dict() for k, m in run.methods.items()},
            iteration=run.iteration,
        )
    return finish(run, cfg, stages, out) if run.done else {}


def build_run(cfg: Config, data: TrainData, device: torch.device) -> tuple[Run, list[Stage]]:
    """Student, EMA teacher, stages and plug-ins, optimizer; fills the plug-ins' option defaults into `cfg`."""
    num_classes = (data.val if data.val is not None else data.source.dataset).num_classes
    spec = {"name": cfg.model.name, "num_classes": num_classes, "kwargs": dict(cfg.model.kwargs)}

    def model():
        return build_model(cfg.model.name, num_classes, cfg.model.pretrained or None, **cfg.model.kwargs).to(device)

    student = model()
    if device.type == "cuda" and cfg.train.channels_last:
        student = student.to(memory_format=torch.channels_last)
    teacher = copy.deepcopy(student).requires_grad_(False)
    stages = build_stages(cfg, num_classes, student.feature_dim, device)
    methods = all_methods(stages)
    heads = {f"{n}.{k}": mod.to(device) for n, m in methods.items() for k, mod in m.modules().items()}
    optimizer = O.build_optimizer(O.param_groups(student, heads, cfg.optim), cfg.optim)
    cfg.methods = {**cfg.methods, **resolved_options(list(methods.values()))}  # cfg is train()'s own copy
    run = Run(
        student=student,
        teacher=teacher,
        optimizer=optimizer,
        heads=heads,
        methods=methods,
        data=data,
        device=device,
        model_spec=spec,
        config_dict=to_dict(cfg),
    )
    fd = cfg.feature_distance
    if fd.weight > 0:  # the frozen pretrained encoder, rebuilt from the file (also on resume)
        run.feature_distance = FeatureDistance(model(), fd.weight, fd.classes, fd.min_ratio, num_classes)
    return run, stages


def start_run(run: Run, cfg: Config, out: Path, resume: bool) -> None:
    """From last.pt (--resume, same config) or from the start (train.init weights if given); writes config.yaml."""
    last = out / "last.pt"
    if resume:
        for note in dist.on_main(lambda: folder.check_same_run(out, cfg)) or []:
            tqdm.write(note)
    if resume and last.exists():
        restore(run, last)
        if dist.is_main():
            print(f"resumed {last} at iteration {run.iteration}")
    else:
        if resume and dist.is_main():
            print(f"--resume: no {last} yet, starting from the beginning")
        if cfg.train.init:
            init_weights(run, cfg.train.init)
    if dist.is_main():
        save_config(cfg, out / "config.yaml")
        trim_jsonl(out / "metrics.jsonl", run.iteration)
    dist.barrier()


def amp_dtype(cfg: Config, device: torch.device) -> torch.dtype:
    """The autocast dtype on CUDA with train.amp (bf16 where supported, else fp16); float32 otherwise. Plug-ins hand
    the kernels their embeddings and banks in it (Step.compute_dtype), so the bank GEMMs run on tensor cores."""
    if device.type == "cuda" and cfg.train.amp:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def amp_context(cfg: Config, device: torch.device):
    dtype = amp_dtype(cfg, device)
    if dtype != torch.float32:
        return lambda: torch.autocast("cuda", dtype=dtype)
    return contextlib.nullcontext


def optimize(run: Run, cfg: Config, losses: dict[str, torch.Tensor], params: list) -> float | None:
    """Backward, gradient averaging across ranks, clipping, optimizer step; returns the gradient norm, or None
    (no optimizer step) when clipping finds it non-finite: averaged first, so every rank decides alike."""
    run.optimizer.zero_grad(set_to_none=True)
    losses["total"].backward()
    dist.average_gradients(params)
    gnorm = O.grad_norm_clip(params, cfg.optim.grad_clip)
    if cfg.optim.grad_clip > 0 and not math.isfinite(gnorm):
        return None
    run.optimizer.step()
    return gnorm


def skip_step(run: Run, buffers: list[torch.Tensor], it: int, out: Path, why: str) -> float:
    """A step with a non-finite loss or gradient changes nothing: BatchNorm statistics back, no optimizer step, no
    teacher or plug-in update. MAX_BAD_STEPS in a row stop the run; last.pt keeps its last finite state."""
    restore_buffers(run, buffers)
    run.optimizer.zero_grad(set_to_none=True)
    run.bad_in_a_row += 1
    if dist.is_main():
        tqdm.write(f"iteration {it}: {why}; step skipped (weights, BatchNorm statistics, teacher unchanged)")
    if run.bad_in_a_row >= MAX_BAD_STEPS:
        held = (
            f"{out / 'last.pt'} holds iteration {run.saved_at}, whose tensors are all finite"
            if run.saved_at is not None
            else "no last.pt was written"
        )
        raise NonFiniteLoss(
            f"{MAX_BAD_STEPS} consecutive steps with a non-finite loss or gradient up to iteration "
            f"{it}: lower optim.lr or check the data; {held}"
        )
    return math.nan


@torch.no_grad()
def update_state(run: Run, cfg: Config, step: Step, methods: list[Method]) -> None:
    """After the optimizer: one set of BatchNorm statistics on all ranks, the EMA teacher, the plug-ins' state."""
    dist.broadcast_module(run.student, buffers_only=True)  # before the EMA reads them
    O.ema_update(run.teacher, run.student, cfg.train.ema, step.iteration)
    for m in methods:
        m.update(step)
    for m in methods:
        m.sync_state()


def make_step(run: Run, cfg: Config, it: int, src: dict, tgt: dict | None, amp) -> Step:
    device = run.device
    # The models' own randomness (MiT stochastic depth, dropout) draws from the global RNG, which DataLoader
    # iterators also consume at points that differ after a resume: seed it per step like the other streams.
    torch.manual_seed(int(np.random.SeedSequence([cfg.train.seed, it, dist.rank(), 1]).generate_state(1)[0]))
    return Step(
        iteration=it,
        source_image=src["image"].to(device, non_blocking=True),
        source_label=src["label"].to(device, non_blocking=True),
        target_image=None if tgt is None else tgt["image"].to(device, non_blocking=True),
        generator=step_generator(cfg.train.seed, it, dist.rank()),
        student=run.student,
        teacher=run.teacher,
        amp=amp,
        compute_dtype=amp_dtype(cfg, device),
    )


@dataclass
class LoopTools:
    """What every iteration of `loop` uses besides the run: autocast, the parameters, progress, log, stop flag."""

    amp: Any
    params: list
    bar: Any
    log: MetricLog
    stop: StopFlag
    stop_after: int | None


def loop(run: Run, cfg: Config, stages: list[Stage], out: Path, stop_after: int | None) -> None:
    """Both stages from run.iteration; sets run.done unless stopped (a signal on any rank, or `stop_after`)."""
    from udaseg.kernels import use_impl

    params = [p for g in run.optimizer.param_groups for p in g["params"]]
    bar = tqdm(
        total=stages[-1].end, initial=run.iteration, disable=not dist.is_main(), dynamic_ncols=True, desc="train"
    )
    log = MetricLog(out / "metrics.jsonl", cfg.data.batch_size * dist.world_size())
    with StopFlag() as stop, use_impl(cfg.train.kernels):
        tools = LoopTools(amp_context(cfg, run.device), params, bar, log, stop, stop_after)
        try:
            for stage in stages:
                if run.iteration < stage.end and run_stage(run, cfg, stage, out, tools):
                    return
            run.done = True
        finally:
            bar.close()


def run_stage(run: Run, cfg: Config, stage: Stage, out: Path, tools: LoopTools) -> bool:
    """The stage's iterations from run.iteration; True when stopped (last.pt written), False at its end."""
    begin = max(run.iteration, stage.start)
    src_it, tgt_it = streams(
        cfg, run.data, begin, stage.end, dist.rank(), run.device.type == "cuda", target=stage.uses_target_images
    )
    if stage.name == "adapt" and not run.history.before_recorded:
        record_before(run, cfg, out, begin)  # no warm-up stage in this run: "before" = initial model
    for it in range(begin, stage.end):
        lr = O.set_lr(
            run.optimizer, O.lr_factor(it - stage.start, stage.length, cfg.optim.warmup_iters, cfg.optim.poly_power)
        )
        step = make_step(run, cfg, it, next(src_it), tgt := next(tgt_it), tools.amp)
        buffers = snapshot_buffers(run)  # the forward passes update BatchNorm statistics
        losses = train_step(step, stage.methods, run.feature_distance)
        run.monitor.observe(step, tgt)  # its labels, if any, are only counted for monitoring
        losses["total"] = sum(losses.values())
        finite, stopping = step_flags(losses, tools.stop, it)
        gnorm = optimize(run, cfg, losses, tools.params) if finite else None
        if gnorm is None:
            gnorm = skip_step(run, buffers, it, out, "non-finite gradient" if finite else "non-finite loss")
        else:
            run.bad_in_a_row = 0
            update_state(run, cfg, step, stage.methods)
        run.iteration = it + 1
        tools.bar.update(1)
        tools.log.add(losses, step.metrics)
        if run.iteration % cfg.train.log_every == 0 or run.iteration == stage.end:
            row = tools.log.flush(run.iteration, stage.name, lr, gnorm, domains=1 + (step.target_image is not None))
            tools.bar.set_postfix(loss=f"{row['total']:.3f}", it_s=f"{row['it_per_s']:.2f}", refresh=False)
            run.monitor.flush(run.iteration, run.teacher)
        after_step(run, cfg, stage, out)
        if run.monitor.stop_requested:  # collapse guard with monitor.on_collapse=stop|rollback: finish here
            run.monitor.rollback(run.teacher, run.student)
            run.done = True
            return True
        if stopping or (tools.stop_after is not None and tools.log.steps >= tools.stop_after):
            if run.saved_at != run.iteration:
                save(run, out)
            if stopping and dist.is_main():
                tqdm.write(
                    f"stopped at iteration {run.iteration}: {out / 'last.pt'} holds the run (continue with --resume)"
                )
            return True
    return False


def after_step(run: Run, cfg: Config, stage: Stage, out: Path) -> None:
    """Checkpoints and evaluations due after the step: the end-of-stage save comes before its evaluation."""
    t, n = cfg.train, run.iteration
    end_of_stage = n == stage.end
    periodic_eval = stage.name == "adapt" and t.eval_every and n % t.eval_every == 0 and not end_of_stage
    if (t.ckpt_every and n % t.ckpt_every == 0) or end_of_stage:
        save(run, out)
    if stage.name == "warmup" and end_of_stage:
        record_before(run, cfg, out, n)
    elif periodic_eval and run.data.val is not None:
        result = eval_teacher(run, cfg, full=False) if dist.is_main() else None
        if result:
            append_jsonl(out / "metrics.jsonl", {"iter": n, "stage": "eval", "miou": result["miou"]})
            tqdm.write(f"iteration {n}: target mIoU {result['miou']:.2f}")
        dist.barrier()
    if periodic_eval:
        run.monitor.evaluate(n, run)  # label-free score beside the mIoU above, best_unsupervised.pt


def save(run: Run, out: Path) -> None:
    """last.pt at run.iteration (rank 0), only if every tensor in it is finite: else the previous last.pt stays.

    Every rank checks its own (identical) state and they agree, so a refusal stops all of them."""
    bad = non_finite(
        {
            "model": run.student.state_dict(),
            "teacher": run.teacher.state_dict(),
            "optimizer": run.optimizer.state_dict()["state"],
            "heads": {k: m.state_dict() for k, m in run.heads.items()},
            "methods": {k: m.state_dict() for k, m in run.methods.items()},
        }
    )
    if any(dist.any_flags(bool(bad))):
        held = f"holds iteration {run.saved_at}" if run.saved_at is not None else "was not written"
        raise NonFiniteLoss(
            f"iteration {run.iteration}: the training state is no longer finite ({len(bad)} tensors"
            f"{', e.g. ' + ', '.join(bad[:3]) if bad else ' on another rank'}): lower optim.lr; "
            f"{out / 'last.pt'} {held}"
        )
    if dist.is_main():
        save_checkpoint(out / "last.pt", checkpoint_payload(run, run.iteration))
    run.saved_at = run.iteration
    dist.barrier()


def check_data(cfg: Config) -> int:
    """--check-data: build and check every input of the config, print the summaries, train nothing."""
    check_inputs(build_datasets(validate(copy.deepcopy(cfg))))
    print("data check passed")
    return 0


# ----------------------------------------------------------------------------- CLI
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m udaseg.train", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config",
        help="YAML file of values that differ from the defaults (udaseg/config.py), or the "
        "name of one in udaseg/configs",
    )
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
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue the run in --out from its last.pt")
    mode.add_argument("--overwrite", action="store_true", help="replace the run --out holds (its files are deleted)")
    p.add_argument("--no-eval", action="store_true", help="no evaluation: the val split need not be labelled")
    p.add_argument("--check-data", action="store_true", help="only check every input pair, print a summary, exit")
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


FLAG_KEYS = {
    "source": "data.source",
    "target": "data.target",
    "method": "train.method",
    "warmup": "train.warmup",
    "iters": "train.iters",
    "warmup_iters": "train.warmup_iters",
    "kernels": "train.kernels",
    "device": "train.device",
    "seed": "train.seed",
}


def _main(argv: list[str]) -> int:
    args = parse_args(argv)
    flags = [f"{key}={getattr(args, name)}" for name, key in FLAG_KEYS.items() if getattr(args, name) is not None]
    flags += ["train.evaluate=false"] if args.no_eval else []
    config_file = shipped_config(args.config) if args.config else None
    resume = args.resume or dist.restarted()
    if resume and not config_file and args.out and (Path(args.out) / "config.yaml").exists():
        config_file = Path(args.out) / "config.yaml"  # resume with the run's own resolved config
    cfg = load_config(config_file, flags + args.set)
    if args.check_data:
        return check_data(cfg)
    out = Path(args.out or f"runs/{cfg.train.method.replace('+', '-')}-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        train(cfg, out, resume=args.resume, overwrite=args.overwrite)
    finally:
        dist.shutdown()
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: a user's mistake or an OS error is one line on stderr and exit code 2 (udaseg.cli)."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
