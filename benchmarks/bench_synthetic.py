"""How much of the domain gap does each method close on the embedded synthetic benchmark?

    python benchmarks/bench_synthetic.py                                  # source_only, self_training, oracle
    python benchmarks/bench_synthetic.py --methods self_training,dida --seeds 0,1
    python benchmarks/bench_synthetic.py --rows-only dida                 # add rows to the committed results
    python benchmarks/bench_synthetic.py --rows-only mic,dida+mic --set train.warmup_iters=600 \
        --set train.iters=600 --set train.eval_every=0                    # MIC's rows, the committed schedule

Each run is a fresh `python -m udaseg.train` process (so peak memory is that run's own). Per seed, one source-only
warm-up of `train.warmup_iters` iterations is shared: every row then trains `train.iters` iterations from it
(`source_only` keeps training on source, so all rows see the same number of iterations); DiGA runs its own
distillation warm-up. `oracle` trains on target labels for the whole schedule (the upper bound).
Gap closure = (method - source_only) / (oracle - source_only). Finished runs are reused when re-run.

Checkpoint selection without labels (docs/trust.md): adaptation runs evaluate every `--select-every` iterations
(labelled mIoU and the label-free scores, metrics.jsonl "select" rows; the start of adaptation is one of the points).
Per row: the target mIoU of the checkpoint the default criterion (monitor.criterion) selects, of the best checkpoint
by labelled mIoU, of the last one, the largest best - selected gap over the seeds, and the collapse warnings fired.
A row `METHOD@4x` runs the method on a 4x schedule (warm-up and adaptation both 4x, its own shared warm-up): does
the gain grow, hold or fade?
    python benchmarks/bench_synthetic.py --rows-only source_only@4x,self_training@4x,dida+cpsl@4x,oracle@4x
A row `METHOD@photometric` turns on the source view's colour/style randomisation (PHOTOMETRIC: jitter, grayscale,
blur, FDA; docs/trust.md) for its own warm-up and adaptation; its gap closure is measured against the plain
source_only and oracle rows, so source_only@photometric shows what the randomisation alone closes:
    python benchmarks/bench_synthetic.py --rows-only source_only@photometric,self_training@photometric
A row `METHOD@naive` adapts with self-training's safeguards off (NAIVE: no EMA teacher, no ClassMix, no strong view,
every pseudo-label at full weight) from the plain warm-up: a run that collapses on purpose, where the best checkpoint
is not the last, to test the label-free selection and the collapse guard; `@rollback` adds
monitor.on_collapse=rollback (the warning ends the run with the best checkpoint by the label-free score):
    python benchmarks/bench_synthetic.py --rows-only self_training@naive,self_training@naive@rollback
A row `METHOD@MODEL` trains another model (its own warm-up, baseline and bound: `source_only@MODEL`,
`oracle@MODEL`), e.g. the smallest MiT next to the compact CNN (docs/models.md; ~3.5x the compact model's time):
    python benchmarks/bench_synthetic.py --jobs 2 --set train.warmup_iters=600 --set train.iters=600 \
        --set train.eval_every=0 --rows-only source_only@segformer_mitb0,self_training@segformer_mitb0,\
diga@segformer_mitb0,oracle@segformer_mitb0
Results: benchmarks/results/synthetic-<device>.json and .md (the README's table comes from the .md).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RARE = 4  # report the IoU of this many rarest classes (by target val pixel share)


def schedule(overrides: list[str] = ()) -> tuple[int, int]:
    """(warm-up, adaptation) iterations: the defaults of udaseg/config.py with the benchmark's --set overrides."""
    from udaseg.config import load_config

    t = load_config(None, [o for o in overrides if o.startswith("train.")]).train
    return t.warmup_iters, t.iters


def train_run(out: Path, args: list[str]) -> dict:
    """One `python -m udaseg.train` process (its own peak memory); returns its final.json."""
    if not (out / "final.json").exists():  # finished runs are reused: the benchmark can be stopped and restarted
        subprocess.run([sys.executable, "-m", "udaseg.train", "--out", str(out), *args], check=True, cwd=ROOT)
    return {**json.loads((out / "final.json").read_text()), "selection": selection(out)}


CRITERIA = ("agreement", "im", "snd", "entropy")  # udaseg.engine.selection.CRITERIA


def selection(run: Path) -> dict | None:
    """Target mIoU of the checkpoint each label-free criterion picks, of the best and of the last checkpoint.

    From the run's metrics.jsonl "select" rows that carry a labelled mIoU; None for a run without them (a warm-up,
    the oracle, a run with train.eval_every=0 or from before the selection columns).
    """
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    points = [r for r in rows if r.get("stage") == "select" and r.get("miou") is not None]
    if len(points) < 2:
        return None
    warnings = [f"{r['kind']}@{r['iter']}" for r in rows if r.get("stage") == "warning"]  # the collapse guard
    picked = {c: max(points, key=lambda r: r[c])["miou"] for c in CRITERIA if all(c in r for r in points)}
    criterion = points[-1].get("criterion", "agreement")
    return {
        "criterion": criterion,
        "selected": picked[criterion],
        "by_criterion": picked,
        "best": max(r["miou"] for r in points),
        "last": points[-1]["miou"],
        "first": points[0]["miou"],
        "points": [r["iter"] for r in points],
        "warnings": warnings,
        # every evaluation's labelled mIoU and label-free scores: why a criterion picked what it picked
        "trace": [{"iter": r["iter"], "miou": r["miou"], **{c: r[c] for c in CRITERIA if c in r}} for r in points],
    }


PHOTOMETRIC = ["augment.jitter=0.3", "augment.grayscale=0.1", "augment.blur=0.3", "augment.fda=0.5"]
# Self-training with its safeguards off: the teacher is the student (no EMA), no ClassMix, no strong view, every
# pseudo-label at full weight. Confirmation bias on purpose: a run that ends below its start, to see whether the
# label-free selection and the collapse guard catch it.
NAIVE = [
    "train.ema=0.0",
    "methods.self_training.mix=none",
    "methods.self_training.strong_view=false",
    "methods.self_training.pseudo_threshold=0.0",
]
# Row variants `METHOD@name`: name -> (config overrides, whether they change the warm-up too). A variant that changes
# the warm-up gets run folders of its own; an adaptation-only one shares the plain warm-up. Every variant is measured
# against the plain source_only and oracle rows.
VARIANTS = {
    "photometric": (PHOTOMETRIC, True),
    "naive": (NAIVE, False),
    "rollback": (["monitor.on_collapse=rollback"], False),  # a collapse warning ends the run with best_unsupervised
}


def row_variants(row: str) -> tuple[str, list[str]]:
    """'self_training@naive@rollback' -> ('self_training', ['naive', 'rollback']); other rows unchanged, []."""
    tokens = row.split("@")
    found = [t for t in tokens[1:] if t in VARIANTS]
    return "@".join([tokens[0], *(t for t in tokens[1:] if t not in found)]), found


def row_schedule(row: str, sched: tuple[int, int], base: Path) -> tuple[str, tuple[int, int], Path]:
    """'dida@4x' -> ('dida', 4x the schedule, base/x4): a long-schedule row, with its own run folders."""
    method, _, mult = row.partition("@")
    if not mult:
        return method, sched, base
    factor = int(mult.rstrip("x"))
    return method, (sched[0] * factor, sched[1] * factor), base / f"x{factor}"


def row_model(row: str) -> tuple[str, str | None]:
    """'self_training@segformer_mitb0' -> ('self_training', 'segformer_mitb0'): a row on another model (any '@' token
    that is not a schedule multiplier 'Nx' names the model); ('dida@4x', None) keeps the default model."""
    tokens = row.split("@")
    models = [t for t in tokens[1:] if not (t.endswith("x") and t[:-1].isdigit())]
    if len(models) > 1:
        raise SystemExit(f"row {row!r}: one model per row, found {models}")
    return "@".join(t for t in tokens if t not in models), (models[0] if models else None)


def run_row(
    method: str, seed: int, base: Path, extra: list[str], sched: tuple[int, int], select_every: int = 0
) -> dict:
    """A row's run for one seed. Adaptation rows start from the seed's shared source-only warm-up and evaluate every
    `select_every` iterations (labelled mIoU beside the label-free scores: the selection columns)."""
    method, variants = row_variants(method)
    adapt_only, tag = [], ""  # adaptation-only variants: their overrides and the run folder's suffix
    for name in variants:
        sets, warmup_too = VARIANTS[name]
        flags = [x for s in sets for x in ("--set", s)]
        if warmup_too:  # its own run folders: the variant changes the warm-up too
            extra, base = [*extra, *flags], base / name
        else:
            adapt_only, tag = [*adapt_only, *flags], f"{tag}-{name}"
    method, model = row_model(method)
    if model:  # its own run folders, shared warm-up included
        extra, base = [*extra, "--set", f"model.name={model}"], base / model
    method, sched, base = row_schedule(method, sched, base)
    warm_iters, iters = sched
    common = ["--seed", str(seed), *extra]
    adapt_extra = ["--set", f"train.eval_every={select_every}"] if select_every and method != "source_only" else []
    adapt_extra += adapt_only
    folder = f"{method.replace('+', '-')}{tag}-s{seed}"
    if method == "oracle":  # supervised on the target domain for the whole schedule: the upper bound
        return train_run(
            base / f"oracle-s{seed}",
            [
                *common,
                "--source",
                "synthetic_target",
                "--method",
                "source_only",
                "--warmup-iters",
                "0",
                "--iters",
                str(warm_iters + iters),
                "--set",
                "data.rcs=false",
            ],
        )
    if method.startswith("diga"):  # DiGA brings its own warm-up stage (symmetric distillation)
        return train_run(
            base / folder,
            [
                *common,
                "--method",
                method,
                "--warmup",
                "diga",
                "--warmup-iters",
                str(warm_iters),
                "--iters",
                str(iters),
                *adapt_extra,
            ],
        )
    warm = train_run(
        base / f"warmup-s{seed}",
        [*common, "--method", "source_only", "--warmup-iters", "0", "--iters", str(warm_iters)],
    )
    result = train_run(
        base / folder,
        [
            *common,
            "--method",
            method,
            "--warmup-iters",
            "0",
            "--iters",
            str(iters),
            "--set",
            f"train.init={base / f'warmup-s{seed}' / 'final.pt'}",
            *adapt_extra,
        ],
    )
    result["wall_time_s"] += warm["wall_time_s"]  # the warm-up is part of every row's cost
    return result


def rare_classes(count: int) -> list[str]:
    """The `count` classes with the smallest pixel share in the target validation labels."""
    from udaseg.data import build_dataset

    val = build_dataset("synthetic", split="val", role="target")
    hist = torch.zeros(val.num_classes, dtype=torch.long)
    for i in range(len(val)):
        lbl = val[i]["label"]
        hist += torch.bincount(lbl[lbl < val.num_classes].flatten(), minlength=val.num_classes)
    order = [int(c) for c in torch.argsort(hist) if hist[c] > 0]
    return [val.class_names[c] for c in order[:count]]


def aggregate(runs: list[dict], rare: list[str]) -> dict:
    mious = [r["miou"] for r in runs]
    return {
        "miou": statistics.mean(mious),
        "miou_std": statistics.stdev(mious) if len(mious) > 1 else 0.0,
        "seeds": [r["seed"] for r in runs],
        "per_seed": mious,
        "rare_iou": {c: statistics.mean(r["per_class"][c] for r in runs) for c in rare},
        "wall_time_s": statistics.mean(r["wall_time_s"] for r in runs),
        "peak_memory_mb": max(r.get("peak_memory_mb", float("nan")) for r in runs),
        "selection": aggregate_selection([r.get("selection") for r in runs]),
    }


def aggregate_selection(per_seed: list[dict | None]) -> dict | None:
    """Seed means of the selected / best / last checkpoints' mIoU and the worst best - selected gap (None if a seed
    has no selection data)."""
    if not per_seed or any(s is None for s in per_seed):
        return None
    mean = {k: statistics.mean(s[k] for s in per_seed) for k in ("selected", "best", "last", "first")}
    criteria = set.intersection(*(set(s["by_criterion"]) for s in per_seed))
    return {
        **mean,
        "criterion": per_seed[0]["criterion"],
        "warnings": sum(len(s["warnings"]) for s in per_seed),
        "max_gap": max(s["best"] - s["selected"] for s in per_seed),
        "by_criterion": {c: statistics.mean(s["by_criterion"][c] for s in per_seed) for c in sorted(criteria)},
        "max_gap_by_criterion": {c: max(s["best"] - s["by_criterion"][c] for s in per_seed) for c in sorted(criteria)},
        "per_seed": [{"warnings": s["warnings"], "trace": s.get("trace", [])} for s in per_seed],
    }


def markdown(rows: dict[str, dict], meta: dict, rare: list[str]) -> str:
    head = "| method | target mIoU | ± std | seeds | gap closure | " + " | ".join(rare) + " | wall (s) | peak MB |"
    lines = [
        f"Synthetic benchmark, {meta['device']}, schedule: {meta['schedule']}",
        "",
        head,
        "|" + "---|" * (7 + len(rare)),
    ]
    for name, r in rows.items():
        gap = "—"
        suffix = name[name.index("@") :] if "@" in name else ""  # a long-schedule row: its own baseline and bound
        for variant in VARIANTS:  # measured against the plain baseline and bound
            suffix = suffix.replace(f"@{variant}", "")
        so, oracle = rows.get("source_only" + suffix), rows.get("oracle" + suffix)
        if so and oracle and name not in ("source_only" + suffix, "oracle" + suffix) and oracle["miou"] > so["miou"]:
            gap = f"{100 * (r['miou'] - so['miou']) / (oracle['miou'] - so['miou']):.0f} %"
        rare_cells = " | ".join(f"{r['rare_iou'].get(c, float('nan')):.1f}" for c in rare)
        lines.append(
            f"| {name} | {r['miou']:.2f} | {r['miou_std']:.2f} | {len(r['seeds'])} | {gap} | {rare_cells} "
            f"| {r['wall_time_s']:.0f} | {r['peak_memory_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n" + selection_markdown(rows)


def selection_markdown(rows: dict[str, dict]) -> str:
    """The checkpoint-selection table: target mIoU of the checkpoint picked without labels vs the best and last."""
    picked = {
        k: r["selection"]
        for k, r in rows.items()  # the oracle's start is a random model: no row
        if r.get("selection") and k.split("@")[0] != "oracle"
    }
    if not picked:
        return ""
    # Every criterion is logged at every evaluation, so each column is exactly what that criterion would have kept;
    # the first one is the toolkit's current default, whichever criterion the runs were started with.
    from udaseg.config import MonitorConfig

    criterion = MonitorConfig().criterion
    others = [c for c in CRITERIA if c != criterion]
    lines = [
        "",
        f"Checkpoint selection without target labels (default criterion: {criterion}; mean over seeds; "
        "max gap = worst seed's best - selected)",
        "",
        f"| method | start | selected ({criterion}) | best checkpoint | last | max gap | collapse warnings | "
        + " | ".join(f"selected ({c}), max gap" for c in others)
        + " |",
        "|" + "---|" * (7 + len(others)),
    ]
    for name, sel in picked.items():
        cells = " | ".join(
            f"{sel['by_criterion'].get(c, float('nan')):.2f}, {sel['max_gap_by_criterion'].get(c, float('nan')):.2f}"
            for c in others
        )
        lines.append(
            f"| {name} | {sel['first']:.2f} | {sel['by_criterion'][criterion]:.2f} | {sel['best']:.2f} "
            f"| {sel['last']:.2f} | {sel['max_gap_by_criterion'][criterion]:.2f} | {sel['warnings']} | {cells} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--methods", default="source_only,self_training,oracle", help="comma-separated rows to run")
    p.add_argument("--seeds", default="0,1", help="comma-separated seeds; each row is the mean over them")
    p.add_argument("--rows-only", help="run only these rows and merge them into the existing result file")
    p.add_argument("--out", default="runs/bench", help="run folders")
    p.add_argument("--set", action="append", default=[], help="train config override for every run")
    p.add_argument("--jobs", type=int, default=1, help="runs side by side (one thread each), e.g. 2 on 2 cores")
    p.add_argument("--results", default=str(RESULTS), help="folder of the result files (a smoke run: elsewhere)")
    p.add_argument(
        "--select-every",
        type=int,
        default=100,
        help="evaluate adaptation runs every N iterations for the selection columns (0: no columns)",
    )
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({platform.processor() or 'x86_64'})"
    tag = "gpu" if device == "cuda" else "cpu"
    path = Path(args.results) / f"synthetic-{tag}.json"
    seeds = [int(s) for s in args.seeds.split(",")]
    methods = (args.rows_only or args.methods).split(",")
    previous = json.loads(path.read_text()) if args.rows_only and path.exists() else {"rows": {}}
    sched = schedule(args.set)  # iteration counts go to each run as flags, everything else as --set
    extra = [x for s in args.set if not s.startswith(("train.iters=", "train.warmup_iters=")) for x in ("--set", s)]
    rare = rare_classes(RARE)
    rows = dict(previous["rows"])
    if args.jobs > 1:
        extra += ["--set", "train.threads=1"]  # one core per run: no OpenMP oversubscription between the jobs
    warm_iters, iters = sched
    meta = {
        "device": name,
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d"),
        "schedule": f"{warm_iters} source-only warm-up iterations (shared by the rows of a seed) + {iters} "
        "adaptation iterations; oracle: all on target labels" + (f"; overrides {args.set}" if args.set else ""),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
    }
    for method in methods:
        with ThreadPoolExecutor(args.jobs) as pool:  # the seeds of a row run side by side

            def one(seed: int, m: str = method) -> dict:
                return {**run_row(m, seed, ROOT / args.out, extra, sched, args.select_every), "seed": seed}

            runs = list(pool.map(one, seeds))
        rows[method] = aggregate(runs, rare)
        print(f"{method}: {rows[method]['miou']:.2f} ± {rows[method]['miou_std']:.2f}")
        write(path, meta, rare, rows)  # after every row: a stopped benchmark keeps what it measured
    print(markdown(order_rows(rows), meta, rare))


def order_rows(rows: dict[str, dict]) -> dict[str, dict]:
    """source_only, self_training, the rest by name, oracle; then the same for each long schedule (METHOD@4x)."""
    ordered: dict[str, dict] = {}
    for suffix in sorted({k[k.index("@") :] if "@" in k else "" for k in rows}, key=lambda x: (x != "", x)):
        first, last = [f"source_only{suffix}", f"self_training{suffix}"], [f"oracle{suffix}"]
        group = [k for k in rows if (k[k.index("@") :] if "@" in k else "") == suffix]
        middle = sorted(k for k in group if k not in first + last)
        ordered.update({k: rows[k] for k in first + middle + last if k in rows})
    return ordered


def write(path: Path, meta: dict, rare: list[str], rows: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = order_rows(rows)
    path.write_text(json.dumps({"meta": meta, "rare_classes": rare, "rows": rows}, indent=2))
    path.with_suffix(".md").write_text(markdown(rows, meta, rare))


if __name__ == "__main__":
    main()
