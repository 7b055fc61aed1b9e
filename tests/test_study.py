"""`scs-gan study --quick`: every arm trains for a few steps and the results are tabulated."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from scs_gan.config import load_yaml
from scs_gan.errors import UserError
from scs_gan.models import build_discriminator, build_generator
from scs_gan.study import _find_unfinished, floor_check, load_study, run_study, train_overrides
from scs_gan.training.config import load_config

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "configs" / "study" / "study.yaml"


STUDY_FILES = sorted(p.name for p in (REPO / "configs" / "study").glob("*.yaml") if "arms" in load_yaml(p))
ARM_FILES = sorted(p.name for p in (REPO / "configs" / "study").glob("*.yaml") if "arms" not in load_yaml(p))


def test_the_study_folder_holds_studies_and_their_arms():
    assert {"study.yaml", "explore.yaml", "cifar10.yaml", "celeba64.yaml"} <= set(STUDY_FILES)
    assert {"scs.yaml", "dcgan.yaml", "cosine.yaml", "scs_d_conv_g.yaml", "conv_d_scs_g.yaml"} <= set(ARM_FILES)


@pytest.mark.parametrize("name", ARM_FILES)
def test_every_arm_config_is_used_by_a_study_and_builds(name):
    path = REPO / "configs" / "study" / name
    used = [
        s
        for s in STUDY_FILES
        if any(Path(a.config) == path.resolve() for a in load_study(REPO / "configs" / "study" / s).arms)
    ]
    assert used, f"{name} is used by no study file"
    config = load_config(path)
    build_generator(config.model, config.data.resolution, config.data.channels)
    build_discriminator(config.model, config.data.resolution, config.data.channels)


@pytest.mark.parametrize("name", STUDY_FILES)
def test_every_study_file_resolves_for_every_run(name, tmp_path):
    study = load_study(REPO / "configs" / "study" / name)
    assert study.arms and study.widths and study.seeds
    for arm in study.arms:
        for width in study.widths:
            config = load_config(arm.config, train_overrides(study, arm, width, study.seeds[0], tmp_path))
            # an arm may set a network's width itself (arm overrides come last); otherwise the study's applies
            for net in ("g", "d"):
                own = next((o for o in arm.overrides if o.startswith(f"model.{net}.channels=")), None)
                expected = int(own.split("=")[1]) if own else width
                assert getattr(config.model, net).channels == expected
            # and its length (recipe9.yaml has a half-length arm)
            own_kimg = next((o for o in arm.overrides if o.startswith("train.kimg=")), None)
            assert config.train.kimg == (float(own_kimg.split("=")[1]) if own_kimg else study.kimg)
            build_generator(config.model, config.data.resolution, config.data.channels)
            build_discriminator(config.model, config.data.resolution, config.data.channels)


def test_study_files_are_valid():
    full = load_study(STUDY)
    assert [a.name for a in full.arms] == ["scs", "dcgan", "cosine", "scs_d_conv_g", "conv_d_scs_g"]
    assert len(full.widths) >= 3 and len(full.seeds) >= 3


def test_bad_study_file(tmp_path):
    (tmp_path / "s.yaml").write_text("arms: [{name: a, config: missing.yaml}]\n")
    with pytest.raises(UserError, match="not found next to the study file"):
        load_study(tmp_path / "s.yaml")


def test_an_interrupted_run_is_found_for_resuming_and_a_finished_or_empty_one_is_not(tmp_path):
    for folder, files in {
        "00000-a-w4-s0": ["final.json", "checkpoints/checkpoint-000000100/x"],  # finished
        "00001-a-w4-s0": ["checkpoints/checkpoint-000000100/x"],  # interrupted after a checkpoint
        "00002-a-w4-s0": ["log.txt"],  # stopped before its first checkpoint: trained again from scratch
        "00003-b-w4-s0": ["checkpoints/checkpoint-000000100/x"],
    }.items():
        for name in files:
            (tmp_path / folder / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / folder / name).write_text("")
    assert _find_unfinished(tmp_path, "a-w4-s0") == tmp_path / "00001-a-w4-s0"
    assert _find_unfinished(tmp_path, "a-w4-s1") is None


def test_jobs_must_be_positive(tmp_path):
    with pytest.raises(UserError, match="--jobs must be at least 1"):
        run_study(STUDY, tmp_path / "s", quick=True, jobs=0)
    assert not (tmp_path / "s").exists()


def test_quick_study_trains_every_arm_and_writes_the_table(tmp_path, fid_weights_file):
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "SCS_GAN_CACHE": str(tmp_path / "cache"),
        "SCS_GAN_FID_WEIGHTS": fid_weights_file,
    }
    cmd = [sys.executable, "-m", "scs_gan", "study", "--config", str(STUDY), "--out", str(tmp_path / "s"), "--quick"]
    # two runs side by side (each with half the cores), as on a 2-core machine
    result = subprocess.run([*cmd, "--jobs", "2"], capture_output=True, text=True, env=env, timeout=900, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    # one bar over the kimg of every run, with a rate and an ETA
    bar = r"study: training and scoring 5 run\(s\), 2 at a time: .*\| [\d.]+/1\.2 kimg \[\d\d:\d\d<\d\d:\d\d, +[\d.]+"
    assert re.search(bar + r"(kimg/s|s/kimg), 5/5 runs done\]", result.stderr), result.stderr[-2000:]
    out = tmp_path / "s"
    table = (out / "table.md").read_text().splitlines()
    assert len(table) == 2 + 5  # header, rule, one row per arm
    for label in ("SCS-GAN", "DCGAN", "cosine only", "SCS D + conv G", "conv D + SCS G"):
        assert any(line.startswith(f"| {label}") for line in table), label
    results = json.loads((out / "results.json").read_text())
    scs = next(r for r in results["records"] if r["arm"] == "scs")
    assert scs["p"] and all(v >= 1.0 for v in scs["p"].values()) and "fid10_10" in scs["metrics"]
    assert (out / "fid_vs_params.png").is_file() and len(list((out / "samples").glob("*.png"))) == 5
    # the real-vs-real floor is below every trained run's FID, and the table shows it beside the FID
    assert "fid10_10 is above its real-vs-real floor in all 5 runs" in result.stdout
    assert results["floor_check"] == "fid10_10 is above its real-vs-real floor in all 5 runs"
    assert "| floor |" in table[0] and all(scs_row_floor != "-" for scs_row_floor in _column(table, "floor"))
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert again.returncode == 0 and "training" not in again.stdout  # finished runs are reused
    assert "done:" in (out / "runs" / "scs-w4-s0.out").read_text()  # each run's output is kept beside it
    (out / "table.md").unlink()
    collect = subprocess.run(
        [*cmd, "--collect-only"], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert collect.returncode == 0 and (out / "table.md").read_text().splitlines() == table


def test_collect_only_without_runs_is_a_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "scs_gan", "study", "--config", str(STUDY), "--out", str(tmp_path), "--collect-only"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode != 0 and "no finished study runs" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def _column(table: list[str], name: str) -> list[str]:
    """The cells of the column ``name`` of a markdown table, below its rule."""
    head = [c.strip() for c in table[0].strip("|").split("|")]
    return [[c.strip() for c in line.strip("|").split("|")][head.index(name)] for line in table[2:]]


def test_floor_check_names_the_runs_at_or_below_their_floor():
    def record(run: str, value: float, floor: float | None) -> dict:
        fid = {"value": value} if floor is None else {"value": value, "floor": floor}
        return {"run": f"/studies/x/runs/{run}", "metrics": {"fid1k_1k": fid}}

    records = [record("00000-a", 30.0, 10.6), record("00001-b", 10.6, 10.6), record("00002-c", 9.0, None)]
    assert (
        floor_check(records, ["fid1k_1k"]) == "fid1k_1k is at or below its real-vs-real floor in 1 of 2 runs: 00001-b"
    )
    assert floor_check(records[:1], ["fid1k_1k"]) == "fid1k_1k is above its real-vs-real floor in all 1 runs"
    assert floor_check(records[2:], ["fid1k_1k"]) is None and floor_check(records, ["kid1k_1k"]) is None


def _summary_row(arm: str, width: int, fid: float, std: float, n_params: int) -> dict:
    return {
        "arm": arm,
        "label": arm,
        "width": width,
        "seeds": 3,
        "g_params": n_params - 10,
        "d_params": 10,
        "fid1k_1k": fid,
        "fid1k_1k_std": std,
    }


def test_param_ratio_picks_each_familys_best_arm_per_width_and_interpolates(tmp_path):
    rows = [
        _summary_row("a_slow", 8, 50.0, 1.0, 100),
        _summary_row("a_fast", 8, 44.0, 1.0, 100),
        _summary_row("a_slow", 16, 30.0, 1.0, 400),
        _summary_row("a_fast", 16, 33.0, 1.0, 400),
        _summary_row("b", 8, 60.0, 2.0, 100),
        _summary_row("b", 16, 37.0, 3.0, 400),
    ]
    (tmp_path / "results.json").write_text(json.dumps({"summary": rows}))
    script = Path(__file__).parents[1] / "scripts" / "param_ratio.py"
    cmd = [
        sys.executable,
        str(script),
        str(tmp_path / "results.json"),
        "--family",
        "A",
        "a_slow",
        "a_fast",
        "--family",
        "B",
        "b",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True).stdout
    assert "width   8        100 parameters  fid1k_1k 44.0 ± 1.0 (3 seeds, a_fast)" in out
    assert "width  16        400 parameters  fid1k_1k 30.0 ± 1.0 (3 seeds, a_slow)" in out
    assert "best B: width 16, 400 parameters" in out
    # A reaches B's 37.0 a half of the way (44 -> 30) from 100 to 400 parameters in log: 200 parameters
    assert "its mean equals 37.0 at about 200 parameters, 0.50x" in out
    assert "A: width 16 is within its spread (30.0 <= 37.0 + 3.0) at 1.00x the parameters" in out
    bad = subprocess.run(
        [*cmd[:2], str(tmp_path / "missing.json"), *cmd[3:]], capture_output=True, text=True, timeout=60, check=False
    )
    assert bad.returncode != 0 and "not a readable study results.json" in bad.stderr and "Traceback" not in bad.stderr
