"""The run folder: never overwritten by another run; resumed only by the same run.

claim(out, resume, overwrite)    refuse a folder holding a run, unless --resume (same run) or --overwrite
check_same_run(out, cfg)         --resume of a run whose config differs: name the keys that differ
"""

from __future__ import annotations

from pathlib import Path

import yaml

from udaseg.config import Config, ConfigError, resume_diff
from udaseg.fileio import UserError

RUN_FILES = ("config.yaml", "metrics.jsonl", "last.pt", "final.pt", "final.json", "curves.png", "samples.png")


def held_files(out: Path) -> list[str]:
    """The run files `out` holds (what makes it a run folder)."""
    return [name for name in RUN_FILES if (out / name).exists()]


def claim(out: Path, resume: bool, overwrite: bool) -> None:
    """Make `out` this run's folder. A folder holding another run is refused unless `resume` (continue it) or
    `overwrite` (its run files are deleted first); a file in the way or an unwritable folder is refused too."""
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other: continue the run in --out, or replace it")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: is a file, not a folder")
    held = held_files(out) if out.is_dir() else []
    if held and not (resume or overwrite):
        raise UserError(
            f"--out {out} already holds a run ({', '.join(held)}): continue it with --resume, "
            f"replace it with --overwrite, or choose another --out"
        )
    if overwrite:
        for name in held:
            (out / name).unlink()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create the run folder ({e.strerror})") from e


def check_same_run(out: Path, cfg: Config) -> list[str]:
    """Compare `cfg` with the config.yaml of the run being resumed. Keys that change what the run computes are
    refused (ConfigError naming each, with both values); returns notes for keys that may change (device, ...)."""
    path = out / "config.yaml"
    if not path.is_file():
        return []
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, OSError) as e:
        raise ConfigError(f"{path}: cannot read the run's config ({e}); fix it or start a new run") from e
    changed, free = resume_diff(saved, cfg)
    if changed:
        raise ConfigError(
            f"--resume {out}: this config differs from the run's ({path}) in {len(changed)} key(s): "
            + "; ".join(changed)
            + ". Resume with the run's own settings (drop the --set/--config that "
            "change them), or start a new run in another --out"
        )
    return [f"--resume: {s} (does not change what is computed)" for s in free]
