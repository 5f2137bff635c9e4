"""The run's inputs: datasets built from the config, checked pair by pair before the first iteration, the
training views and rare-class sampling tables, and the batch streams of a stage."""

from __future__ import annotations

import itertools
from pathlib import Path

from tqdm import tqdm

from udaseg.config import Config
from udaseg.data import build_dataset, dataset_options
from udaseg.engine import data as D
from udaseg.engine.state import TrainData


def build_datasets(cfg: Config) -> dict:
    """{"source", "target", "val"} datasets of the config (val None with train.evaluate=false)."""
    d = cfg.data

    def dataset(spec: str, split: str, role: str):
        return build_dataset(spec, split=split, role=role, **dataset_options(spec, d))  # data.<name> options

    val = dataset(d.val or d.target, d.val_split, "target") if cfg.train.evaluate else None
    return {"source": dataset(d.source, "train", "source"), "target": dataset(d.target, "train", "target"), "val": val}


def check_inputs(datasets: dict) -> list:
    """Read every pair once (rank 0): readable, sizes equal, source and val labelled. Raises DataError naming the
    files; prints one summary line per dataset. A val split without labels is refused here, before any training."""
    from udaseg.data.check import check_dataset

    reports = [
        check_dataset(datasets[role], role, require_labels=role != "target")
        for role in ("source", "target", "val")
        if datasets[role] is not None
    ]
    for report in reports:
        tqdm.write(f"checked {report.summary()}")
    return reports


def build_data(cfg: Config, datasets: dict, out: Path, reports: list | None = None) -> TrainData:
    """Source/target training views, the validation set and the rare-class sampling tables.

    `reports`: check_inputs' reports where this process made them (rank 0): the source's class counts are then
    taken from its check instead of decoding every label a second time.
    """
    d = cfg.data
    rcs = None
    if d.rcs:
        from udaseg.data.rcs import class_stats

        source = next((r for r in reports or [] if r.role == "source"), None)
        known = {"counts": source.counts, "pixels": source.pixels} if source is not None else {}
        counts = class_stats(datasets["source"], cache_dir=out / "cache", **known)  # (N, C), cached in the run folder
        rcs = D.rcs_tables(counts, d.rcs_temperature, d.rcs_min_pixels)
    view = dict(crop=d.crop, scale_range=d.scale_range, flip=True)
    # colour/style randomisation of the labelled source crops (cfg.augment, off by default; docs/trust.md)
    source = D.TrainView(
        datasets["source"],
        resize=d.source_resize,
        min_class_pixels=d.rcs_min_pixels,
        photometric=cfg.augment,
        style_images=datasets["target"],
        **view,
    )
    return TrainData(
        source=source,
        target=D.TrainView(datasets["target"], resize=d.target_resize, **view),
        val=datasets["val"],
        rcs=rcs,
    )


def streams(cfg: Config, data: TrainData, start: int, end: int, rank: int, pin: bool, target: bool):
    """Batches for iterations [start, end): a pure function of (seed, iteration, rank), so resume is exact.

    Without `target` (a source-only stage) the target stream yields None and loads nothing.
    """
    d, seed = cfg.data, cfg.train.seed
    probs, images = data.rcs if data.rcs else (None, None)
    src = D.StepSampler(len(data.source), d.batch_size, start, end, seed, D.SOURCE_STREAM, rank, probs, images)
    tgt = D.StepSampler(len(data.target), d.batch_size, start, end, seed, D.TARGET_STREAM, rank)
    target_stream = D.loader(data.target, tgt, d.workers, pin) if target else itertools.repeat(None)
    return D.loader(data.source, src, d.workers, pin), target_stream
