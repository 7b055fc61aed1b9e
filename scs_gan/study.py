"""``scs-gan study``: does sharpening help a GAN? Every arm trained under one protocol, from one command.

A study file (``configs/study/study.yaml``) lists the arms (each a training config plus overrides), the widths,
the seeds, the training length and the metrics. Every (arm, width, seed) is one ordinary ``scs-gan train``
run in a subprocess, so the study measures exactly what users run. Finished runs are reused and interrupted
ones resumed from their last checkpoint, so an interrupted study continues where it stopped; each run's
output is kept beside it as ``runs/<arm>-w<width>-s<seed>.out``. With ``jobs`` > 1, that many runs train
side by side, each with an equal share of the threads (on a 2-core CPU two one-thread runs get through more
images per second together than one two-thread run, docs/PERFORMANCE.md); a run's numbers depend on its
thread count only through float rounding. The results go to ``results.json``, a Markdown table, a plot of
FID against parameter count, and the sample grids of each arm.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .config import from_dict, load_yaml
from .errors import UserError
from .models import build_discriminator, build_generator, count_parameters
from .training.config import load_run_config


@dataclass
class ArmConfig:
    """One arm: a training config and overrides (widths and seeds are the study's)."""

    name: str
    config: str
    overrides: list[str] = field(default_factory=list)
    label: str = ""


@dataclass
class StudyConfig:
    """The whole study (see configs/study/study.yaml)."""

    arms: list[ArmConfig] = field(default_factory=list)
    widths: list[int] = field(default_factory=lambda: [8, 16, 32])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    kimg: float = 100.0
    metrics: list[str] = field(default_factory=lambda: ["fid1k_1k", "kid1k_1k"])
    overrides: list[str] = field(default_factory=list)


QUICK = {"widths": [4], "seeds": [0], "kimg": 0.25, "metrics": ["fid10_10", "kid10_10", "pr10_10"]}


def load_study(path: str | Path, quick: bool = False) -> StudyConfig:
    """Read a study file; ``quick`` shrinks it to a few steps per arm (for CI)."""
    data = load_yaml(path)
    if quick:
        data = {**data, **QUICK}
    study = from_dict(StudyConfig, data)
    if not study.arms:
        raise UserError(f"study file {str(path)!r} lists no arms")
    base = Path(path).parent
    for arm in study.arms:
        candidate = (base / arm.config) if not Path(arm.config).is_absolute() else Path(arm.config)
        if not candidate.is_file():
            raise UserError(f"arm {arm.name!r}: config {arm.config!r} not found next to the study file")
        arm.config = str(candidate.resolve())
    return study


def _run_name(arm: str, width: int, seed: int) -> str:
    return f"{arm}-w{width}-s{seed}"


def _find_unfinished(runs_dir: Path, name: str) -> Path | None:
    """The newest run directory of ``name`` that has a checkpoint but no final.json (an interrupted run)."""
    for path in sorted(runs_dir.glob(f"*-{name}"), reverse=True):
        if not (path / "final.json").is_file() and any((path / "checkpoints").glob("checkpoint-*")):
            return path
    return None


def _find_run(runs_dir: Path, name: str) -> Path | None:
    for path in sorted(runs_dir.glob(f"*-{name}")):
        if (path / "final.json").is_file():
            return path
    return None


def _trained_kimg(runs_dir: Path, name: str) -> float:
    """How far the newest run directory of ``name`` has trained (its last statistics line), 0 before any tick."""
    for path in sorted(runs_dir.glob(f"*-{name}"), reverse=True):
        try:
            lines = (path / "stats.jsonl").read_text().splitlines()
            return float(json.loads(lines[-1])["kimg"]) if lines else 0.0
        except (OSError, ValueError, KeyError, TypeError):
            return 0.0  # not written yet, or a line being written: counted at the next look
    return 0.0


def train_overrides(
    study: StudyConfig, arm: ArmConfig, width: int, seed: int, runs_dir: Path, quick: bool = False
) -> list[str]:
    """The ``scs-gan train`` overrides of one study run (on top of the arm's config file)."""
    name = _run_name(arm.name, width, seed)
    metrics = "[" + ",".join(study.metrics) + "]"
    overrides = [
        f"model.g.channels={width}",
        f"model.d.channels={width}",
        f"train.seed={seed}",
        f"train.kimg={study.kimg}",
        f"train.runs_dir={runs_dir}",
        f"train.desc={name}",
        f"metrics.names={metrics}",
        "train.progress=false",
        *study.overrides,
        *arm.overrides,
    ]
    if quick:
        overrides += ["train.tick_kimg=0.125", "train.snapshot_ticks=8", "train.checkpoint_ticks=8", "train.batch=16"]
    return overrides


def _train(
    study: StudyConfig, arm: ArmConfig, width: int, seed: int, runs_dir: Path, quick: bool, threads: int | None = None
) -> Path:
    name = _run_name(arm.name, width, seed)
    existing = _find_run(runs_dir, name)
    if existing is not None:
        return existing
    unfinished = _find_unfinished(runs_dir, name)
    if unfinished is not None:  # interrupted: continue from its last checkpoint (bit-exact on one process)
        cmd = [sys.executable, "-m", "scs_gan", "train", "--resume", str(unfinished)]
        tqdm.write(f"study: resuming {name} ({unfinished.name})")
    else:
        overrides = train_overrides(study, arm, width, seed, runs_dir, quick)
        cmd = [sys.executable, "-m", "scs_gan", "train", "--config", arm.config, *overrides]
        tqdm.write(f"study: training {name}")
    env = os.environ.copy()
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    # the run's output goes to a file, not a pipe: a run outlives a study process that is killed
    output = runs_dir / f"{name}.out"
    with output.open("a") as out:
        returncode = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False, env=env).returncode
    if returncode != 0:
        lines = output.read_text(errors="replace").strip().splitlines()
        raise UserError(f"study run {name} failed (exit {returncode}): {lines[-1] if lines else '(no output)'}")
    found = _find_run(runs_dir, name)
    if found is None:
        raise UserError(f"study run {name} finished without a final.json")
    return found


def _collect(run: Path, arm: ArmConfig, width: int, seed: int) -> dict[str, Any]:
    config = load_run_config(run)
    g = build_generator(config.model, config.data.resolution, config.data.channels)
    d = build_discriminator(config.model, config.data.resolution, config.data.channels)
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    final = json.loads((run / "final.json").read_text())
    metrics = {}
    for path in run.glob("metric-*.jsonl"):
        last = json.loads(path.read_text().splitlines()[-1])
        metrics[last["metric"]] = {
            "value": last["value"],
            "std": last.get("std"),
            **{k: last[k] for k in ("recall", "coverage") if k in last},
            **({"floor": last["floor"]["value"]} if (last.get("floor") or {}).get("value") is not None else {}),
        }
    rates = [s["images_per_s"] for s in stats[1:]] or [s["images_per_s"] for s in stats]
    last = stats[-1]
    layer_stats = {which: {k: round(v["mean"], 4) for k, v in last.get(which, {}).items()} for which in ("p", "q")}
    return {
        "arm": arm.name,
        "label": arm.label or arm.name,
        "width": width,
        "seed": seed,
        "run": str(run),
        "g_kind": config.model.g.kind,
        "d_kind": config.model.d.kind,
        "g_params": count_parameters(g),
        "d_params": count_parameters(d),
        "metrics": metrics,
        "images_per_s": statistics.median(rates),
        "train_seconds": final["train_seconds"],
        "kimg": final["kimg"],
        "nan_skips": final["nan_skips"],
        **layer_stats,
    }


def _summary(records: list[dict[str, Any]], metrics: list[str]) -> list[dict[str, Any]]:
    """One row per (arm, width): means and spreads over seeds."""
    rows = []
    keys = sorted(
        {(r["arm"], r["width"]) for r in records}, key=lambda k: ([r["arm"] for r in records].index(k[0]), k[1])
    )
    for arm, width in keys:
        group = [r for r in records if r["arm"] == arm and r["width"] == width]
        row: dict[str, Any] = {
            "arm": arm,
            "label": group[0]["label"],
            "width": width,
            "seeds": len(group),
            "g_params": group[0]["g_params"],
            "d_params": group[0]["d_params"],
            "images_per_s": statistics.mean(r["images_per_s"] for r in group),
            "train_seconds": statistics.mean(r["train_seconds"] for r in group),
        }
        for name in metrics:
            values = [r["metrics"][name]["value"] for r in group if name in r["metrics"]]
            row[name] = statistics.mean(values) if values else math.nan
            row[f"{name}_spread"] = (max(values) - min(values)) / 2 if len(values) > 1 else math.nan
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
            for extra in ("floor", "recall"):
                found = [r["metrics"][name][extra] for r in group if extra in r["metrics"].get(name, {})]
                if found:
                    row[f"{name}_{extra}"] = statistics.mean(found)
        rows.append(row)
    return rows


def floor_check(records: list[dict[str, Any]], metrics: list[str]) -> str | None:
    """One line saying whether every run's FID is above its real-vs-real floor (None without floors)."""
    fid = next((m for m in metrics if m.startswith("fid")), None)
    scored = [r for r in records if "floor" in r["metrics"].get(fid or "", {})]
    if not scored:
        return None
    below = [Path(r["run"]).name for r in scored if r["metrics"][fid]["value"] <= r["metrics"][fid]["floor"]]
    if below:
        return f"{fid} is at or below its real-vs-real floor in {len(below)} of {len(scored)} runs: {', '.join(below)}"
    return f"{fid} is above its real-vs-real floor in all {len(scored)} runs"


def _table(rows: list[dict[str, Any]], metrics: list[str]) -> str:
    fid = next((m for m in metrics if m.startswith("fid")), None)
    kid = next((m for m in metrics if m.startswith("kid")), None)
    pr = next((m for m in metrics if m.startswith("pr")), None)
    floor = fid is not None and any(f"{fid}_floor" in r for r in rows)
    head = ["arm", "width", "G params", "D params", "seeds"]
    if fid:
        head.append(f"{fid} (mean ± std)")
    if floor:
        head.append("floor")
    if kid:
        head.append(f"{kid} (mean)")
    if pr:
        head.append("precision / recall (mean)")
    head += ["images/s", "train time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["label"], str(r["width"]), f"{r['g_params']:,}", f"{r['d_params']:,}", str(r["seeds"])]
        if fid:
            std = r[f"{fid}_std"]
            cells.append(f"{r[fid]:.1f}" + ("" if math.isnan(std) else f" ± {std:.1f}"))
        if floor:
            cells.append(f"{r[f'{fid}_floor']:.1f}" if f"{fid}_floor" in r else "-")
        if kid:
            cells.append(f"{r[kid]:.4f}")
        if pr:
            recall = r.get(f"{pr}_recall")
            cells.append("-" if math.isnan(r[pr]) or recall is None else f"{r[pr]:.2f} / {recall:.2f}")
        cells += [f"{r['images_per_s']:.0f}", f"{r['train_seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for i, arm in enumerate(arms):
        group = [r for r in rows if r["arm"] == arm]
        xs = [r["g_params"] + r["d_params"] for r in group]
        ys = [r[metric] for r in group]
        errs = [0 if math.isnan(r[f"{metric}_std"]) else r[f"{metric}_std"] for r in group]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=f"C{i}", label=group[0]["label"])
    ax.set_xscale("log")
    ax.set_xlabel("parameters (G + D)")
    ax.set_ylabel(f"{metric} (lower is better)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def run_study(
    path: str | Path, out: str | Path, quick: bool = False, collect_only: bool = False, jobs: int = 1
) -> Path:
    """Train every (arm, width, seed) that is not done yet, ``jobs`` at a time, then write the results into ``out``.

    With ``collect_only`` nothing is trained: the results are written from the runs finished so far.
    """
    if jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    study = load_study(path, quick)
    out = Path(out)
    runs_dir = out / "runs"
    if not collect_only:  # tabulating must not create a study where there was none (e.g. a mistyped --out)
        runs_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    # all arms for one seed first: a partial study is already a comparison
    order = [(arm, width, seed) for seed in study.seeds for arm in study.arms for width in study.widths]
    if not collect_only:
        threads = max(1, torch.get_num_threads() // jobs) if jobs > 1 else None
        todo = [
            _run_name(arm.name, w, seed)
            for arm, w, seed in order
            if _find_run(runs_dir, _run_name(arm.name, w, seed)) is None
        ]
        # a run's last tick may pass study.kimg by part of a batch; resumed runs start where they stopped
        shown = {name: min(_trained_kimg(runs_dir, name), study.kimg) for name in todo}
        bar = tqdm(
            total=round(len(todo) * study.kimg, 3),
            initial=round(sum(shown.values()), 3),
            desc=f"study: training and scoring {len(todo)} run(s), {jobs} at a time",
            unit="kimg",
            bar_format="{l_bar}{bar}| {n:.1f}/{total:.1f} kimg [{elapsed}<{remaining}, {rate_fmt}{postfix}]",
            dynamic_ncols=True,
            file=sys.stderr,
        )
        pool = ThreadPoolExecutor(jobs)
        try:
            futures = [pool.submit(_train, study, arm, w, seed, runs_dir, quick, threads) for arm, w, seed in order]
            while True:
                done, running = wait(futures, timeout=2.0, return_when=FIRST_EXCEPTION)
                for name in (n for n in todo if shown[n] < study.kimg):  # a finished run's file is not read again
                    now = min(_trained_kimg(runs_dir, name), study.kimg)
                    if now > shown[name]:
                        bar.update(now - shown[name])
                        shown[name] = now
                bar.n = min(bar.n, bar.total)  # float sums may pass the total by a rounding error
                bar.set_postfix_str(f"{len(done)}/{len(futures)} runs done", refresh=True)
                if not running or any(f.exception() is not None for f in done):
                    break
            for future in futures:
                future.result()  # a failure stops the study once the runs already started have ended
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            bar.close()
    records = []
    for arm, width, seed in order:
        run = _find_run(runs_dir, _run_name(arm.name, width, seed))
        if run is not None:
            records.append(_collect(run, arm, width, seed))
    if not records:
        raise UserError(f"no finished study runs under {runs_dir}")
    records.sort(key=lambda r: ([a.name for a in study.arms].index(r["arm"]), r["width"], r["seed"]))
    rows = _summary(records, study.metrics)
    check = floor_check(records, study.metrics)
    (out / "results.json").write_text(
        json.dumps(
            {"study": str(path), "quick": quick, "records": records, "summary": rows, "floor_check": check}, indent=1
        )
    )
    (out / "table.md").write_text(_table(rows, study.metrics) + "\n")
    fid = next((m for m in study.metrics if m.startswith("fid")), None)
    if fid:
        _plot(rows, fid, out / "fid_vs_params.png")
    samples = out / "samples"
    samples.mkdir(exist_ok=True)
    for record in records:
        if record["seed"] == study.seeds[0]:
            grids = sorted(Path(record["run"]).glob("fakes*.png"))
            if grids:
                shutil.copyfile(grids[-1], samples / f"{record['arm']}-w{record['width']}.png")
    if check:
        print(f"study: {check}")
    print(f"study: {len(records)} runs, results in {out} ({time.perf_counter() - start:.0f} s)")
    return out
