"""`scs-gan train` end to end, as real processes: run directory, resume bit for bit, signals, NaN guard,
two processes under Accelerate, config errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from scs_gan.snapshot import load_generator
from tests.launch import launch_failure, two_process_launch

REPO = Path(__file__).resolve().parents[2]
SMOKE = str(REPO / "configs" / "smoke.yaml")


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "SCS_GAN_CACHE": str(tmp_path / "cache"), "PYTHONUNBUFFERED": "1"}


def train(tmp_path: Path, *args: str, runs: str = "runs", timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "scs_gan", "train", "--config", SMOKE, f"train.runs_dir={tmp_path / runs}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env(tmp_path), check=False)


def only_run(tmp_path: Path, runs: str = "runs") -> Path:
    dirs = sorted((tmp_path / runs).iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def final_state(run: Path) -> dict[str, torch.Tensor]:
    checkpoint = sorted((run / "checkpoints").glob("checkpoint-*"))[-1]
    state = {}
    for name in ("model.safetensors", "model_1.safetensors", "ema.safetensors"):
        state.update({f"{name}:{k}": v for k, v in load_file(str(checkpoint / name)).items()})
    return state


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def test_run_directory_contents(tmp_path):
    result = train(tmp_path)
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path)
    assert run.name == "00000-mnist5k32-scs"
    for name in ("config.yaml", "dataset.json", "log.txt", "stats.jsonl", "reals.png", "final.json"):
        assert (run / name).is_file(), name
    grids = sorted(p.name for p in run.glob("fakes*.png"))
    assert grids == ["fakes000000000.png", "fakes000001024.png", "fakes000002000.png"]  # named by images shown
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [round(s["kimg"], 3) for s in stats] == [0.256, 0.512, 0.768, 1.024, 1.28, 1.536, 1.792, 2.0]
    first = stats[0]
    for key in (
        "loss_D",
        "loss_G",
        "logit_real",
        "logit_fake",
        "sec_per_kimg",
        "images_per_s",
        "peak_mem_mb",
        "nan_skips",
        "p",
        "q",
    ):
        assert key in first, key
    assert sorted(first["p"]) == sorted(first["q"])
    assert sum(k.startswith("G.net.") for k in first["p"]) == 4 and sum(k.startswith("D.net.") for k in first["p"]) == 4
    assert set(first["p"]["D.net.0"]) == {"mean", "min", "max"}
    assert first["p"]["D.net.0"]["min"] >= 1.0
    dataset = json.loads((run / "dataset.json").read_text())
    assert dataset["name"] == "mnist5k" and dataset["images"] == 5000 and len(dataset["fingerprint"]) == 16
    log = (run / "log.txt").read_text()
    assert "parameters" in log and "dataset mnist5k: 5000 images" in log and "tick 7" in log
    assert len(list((run / "checkpoints").glob("checkpoint-*"))) == 2  # keep_checkpoints
    assert not list((run / "checkpoints").glob(".tmp-*"))
    snapshots = sorted((run / "snapshots").glob("*.safetensors"))
    assert [p.name for p in snapshots] == [
        "network-snapshot-000001024.safetensors",
        "network-snapshot-000002000.safetensors",
    ]
    generator = load_generator(snapshots[-1])
    assert generator(torch.randn(3, 16)).shape == (3, 1, 32, 32)
    final = json.loads((run / "final.json").read_text())
    assert final["replicas_identical"] and final["kimg"] == 2.0
    assert train(tmp_path, "train.kimg=0.1").returncode == 0  # a second run, as short as can be
    assert sorted(p.name for p in (tmp_path / "runs").iterdir())[1] == "00001-mnist5k32-scs"  # never overwritten
    assert json.loads((run / "final.json").read_text()) == final


def test_resume_after_finishing_equals_one_longer_run(tmp_path):
    # constant learning rates: a ramp-down follows train.kimg, so an extended run would ramp down differently
    assert train(tmp_path, "train.kimg=2", "train.lr_rampdown=0", runs="full").returncode == 0
    assert train(tmp_path, "train.kimg=1", "train.lr_rampdown=0", runs="split").returncode == 0
    result = train(tmp_path, "--resume", "latest", "train.kimg=2", runs="split")
    assert result.returncode == 0, result.stderr
    assert_bitwise_equal(final_state(only_run(tmp_path, "full")), final_state(only_run(tmp_path, "split")))
    stats = (only_run(tmp_path, "split") / "stats.jsonl").read_text().splitlines()
    assert len(stats) == 8  # no tick logged twice


def test_resume_honours_options_equal_to_their_defaults(tmp_path):
    """train.tick_kimg=4 is the built-in default: given on resume, it replaces the run's 0.5."""
    assert train(tmp_path, "train.kimg=1", "train.tick_kimg=0.5", "train.g_lr=0.0005").returncode == 0
    result = train(tmp_path, "--resume", "latest", "train.kimg=2", "train.tick_kimg=4")
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path)
    kimgs = [json.loads(line)["kimg"] for line in (run / "stats.jsonl").read_text().splitlines()]
    assert kimgs == [0.512, 1.008, 2.0]  # ticks every 0.5 kimg, then one 4-kimg tick cut short by the end
    assert "changed on resume: train.tick_kimg: 0.5 -> 4.0" in (run / "log.txt").read_text()
    refused = train(tmp_path, "--resume", "latest", "train.g_lr=0.001")  # the default, not what the run used
    assert refused.returncode == 2 and "train.g_lr cannot change when resuming" in refused.stderr


@pytest.fixture(scope="session")  # session: a module fixture is set up again when xdist interleaves modules
def runs_3_and_2_kimg(tmp_path_factory) -> Path:
    """A 3-kimg smoke run ("full") and a 2-kimg one ("cut"), trained once for the tests that damage copies."""
    folder = tmp_path_factory.mktemp("reference")
    assert train(folder, "train.kimg=3", "train.lr_rampdown=0", runs="full").returncode == 0  # extended later
    assert train(folder, "train.kimg=2", "train.lr_rampdown=0", runs="cut").returncode == 0
    return folder


@pytest.mark.xdist_group("runs_3_and_2_kimg")  # one test process trains the fixture once
@pytest.mark.parametrize("damage", ["truncated-weights", "crafted-rng-pickle"])
def test_a_damaged_newest_checkpoint_resumes_bit_exactly_from_the_one_before(tmp_path, damage, runs_3_and_2_kimg):
    shutil.copytree(runs_3_and_2_kimg / "cut", tmp_path / "cut")
    run = only_run(tmp_path, "cut")
    previous, newest = sorted((run / "checkpoints").glob("checkpoint-*"))[-2:]
    assert newest.name == "checkpoint-000002000"
    if damage == "truncated-weights":
        weights = newest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    else:
        import pickle

        class Payload:
            def __reduce__(self):
                return (print, ("this must never run",))

        (newest / "random_states_0.pkl").write_bytes(pickle.dumps(Payload()))
    result = train(tmp_path, "--resume", "latest", "train.kimg=3", runs="cut")
    assert result.returncode == 0, result.stderr
    assert "checkpoint-000002000 is damaged" in result.stdout and "this must never run" not in result.stdout
    assert f"resumed from {previous}" in result.stdout
    assert (run / "checkpoints" / "checkpoint-000002000.damaged-1").is_dir()  # kept, never deleted
    assert_bitwise_equal(final_state(only_run(runs_3_and_2_kimg, "full")), final_state(run))


def test_a_second_process_on_the_same_run_is_refused(tmp_path):
    proc = _start(tmp_path, "runs")
    try:
        _wait_for(lambda: any(p.stat().st_size for p in (tmp_path / "runs").glob("*/stats.jsonl")))
        run = only_run(tmp_path)
        second = train(tmp_path, "--resume", str(run), "train.kimg=6")
        assert second.returncode == 2 and "is in use by process" in second.stderr
        assert len(second.stderr.strip().splitlines()) == 1
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    lines = (run / "stats.jsonl").read_text().splitlines()
    assert len(lines) == len({json.loads(line)["kimg"] for line in lines})  # no tick written twice


@pytest.fixture
def small_disk(tmp_path):
    """A real, tiny file system (tmpfs) to fill; skipped where mounting is not allowed (not root)."""

    def mount(size_kb: int) -> Path:
        where = tmp_path / f"disk{size_kb}"
        where.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)], capture_output=True, check=False
        )
        if result.returncode:
            pytest.skip("mounting a small tmpfs needs root")
        mounted.append(where)
        return where

    mounted: list[Path] = []
    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], capture_output=True, check=False)


@pytest.mark.parametrize("size_kb", [12, 800])
def test_a_full_disk_is_one_sentence_and_keeps_every_finished_checkpoint(tmp_path, small_disk, size_kb):
    """12 KB fills while the run starts; 800 KB while the third checkpoint is written (in torch.save, whose
    writer raises a RuntimeError without the errno)."""
    from scs_gan.training.checkpoint import list_checkpoints, verify_checkpoint

    disk = small_disk(size_kb)
    cmd = [sys.executable, "-m", "scs_gan", "train", "--config", SMOKE, f"train.runs_dir={disk}", "train.kimg=6"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env(tmp_path), check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "the disk is full" in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    run = only_run(disk.parent, disk.name)
    assert not list((run / "checkpoints").glob(".tmp-*")) if (run / "checkpoints").exists() else True
    finished = list_checkpoints(run)
    if size_kb > 100:
        assert len(finished) == 2  # the two before the one that did not fit
    assert all(verify_checkpoint(c, 1) is None for c in finished)


def test_adaptive_augmentation_resumes_bit_exactly(tmp_path):
    """With ADA, R1 through the augmentation and LeCam, a run resumed from its end equals one longer run: the
    strength, its accumulators, the augmentation draws and LeCam's averages are all restored."""
    aug = [
        "train.augment=[translation,cutout]",
        "train.augment_p=0.2",
        "train.ada_target=0.6",
        "train.ada_interval=2",
        "train.ada_kimg=5",
        "train.r1_gamma=1",
        "train.r1_interval=4",
        "train.lecam=0.3",
        "train.lr_rampdown=0",  # extended on resume below
    ]
    assert train(tmp_path, "train.kimg=2", *aug, runs="full").returncode == 0
    assert train(tmp_path, "train.kimg=1", *aug, runs="split").returncode == 0
    result = train(tmp_path, "--resume", "latest", "train.kimg=2", runs="split")
    assert result.returncode == 0, result.stderr
    full, split = only_run(tmp_path, "full"), only_run(tmp_path, "split")
    assert_bitwise_equal(final_state(full), final_state(split))
    stats = [json.loads(line) for line in (full / "stats.jsonl").read_text().splitlines()]
    strengths = [s["augment_p"] for s in stats]
    assert len(set(strengths)) > 1 and all(0 <= p <= 1 for p in strengths)  # it adapts
    assert all(-1 <= s["ada_rt"] <= 1 for s in stats)
    split_stats = {s["kimg"]: s["augment_p"] for s in map(json.loads, (split / "stats.jsonl").read_text().splitlines())}
    common = [s for s in stats if s["kimg"] in split_stats]  # the split run ticked at its first end, 1.008
    assert len(common) >= 4 and all(split_stats[s["kimg"]] == s["augment_p"] for s in common)


def _start(tmp_path: Path, runs: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "scs_gan",
        "train",
        "--config",
        SMOKE,
        f"train.runs_dir={tmp_path / runs}",
        "train.kimg=6",
    ]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(tmp_path))


def _wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


@pytest.fixture(scope="session")
def run_6_kimg(tmp_path_factory) -> Path:
    """An uninterrupted 6-kimg smoke run, trained once for the three signals (the xdist group keeps them on one
    test process)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    assert train(folder, "train.kimg=6", runs="full").returncode == 0
    return only_run(folder, "full")


@pytest.mark.xdist_group("run_6_kimg")
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGKILL, -9)])
def test_interrupt_and_resume_is_bit_exact(tmp_path, sig, code, run_6_kimg):
    proc = _start(tmp_path, "cut")
    try:
        if sig == signal.SIGKILL:  # falls back to the last periodic checkpoint
            _wait_for(lambda: list((tmp_path / "cut").glob("*/checkpoints/checkpoint-*")))
        else:
            _wait_for(lambda: any(p.stat().st_size for p in (tmp_path / "cut").glob("*/stats.jsonl")))
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == code, err
    if sig != signal.SIGKILL:
        assert "the state is saved in" in err and "scs-gan train --resume" in err and "Traceback" not in err
    run = only_run(tmp_path, "cut")
    stopped_at = json.loads(
        sorted((run / "checkpoints").glob("checkpoint-*"))[-1].joinpath("progress.json").read_text()
    )["cur_nimg"]
    assert stopped_at < 6000
    result = train(tmp_path, "--resume", str(run), "train.kimg=6", runs="cut")
    assert result.returncode == 0, result.stderr
    assert f"resumed from {run}" in result.stdout
    assert_bitwise_equal(final_state(run_6_kimg), final_state(run))


def test_metrics_during_and_after_training_and_best_snapshot(tmp_path, fid_weights_file, monkeypatch):
    monkeypatch.setenv("SCS_GAN_FID_WEIGHTS", fid_weights_file)
    result = train(tmp_path, "metrics.names=[fid10_10,kid10_10]", "metrics.every_ticks=4")
    assert result.returncode == 0, result.stderr
    run = only_run(tmp_path)
    fids = [json.loads(line) for line in (run / "metric-fid10_10.jsonl").read_text().splitlines()]
    kids = [json.loads(line) for line in (run / "metric-kid10_10.jsonl").read_text().splitlines()]
    assert [r["kimg"] for r in fids] == [1.024, 2.0] and len(kids) == 2
    assert all(
        r["num_fake"] == 10 and r["dataset"] == json.loads((run / "dataset.json").read_text())["fingerprint"]
        for r in fids
    )
    best = json.loads((run / "snapshots" / "best.json").read_text())
    assert best["value"] == min(r["value"] for r in fids)
    assert load_generator(run / "snapshots" / "best.safetensors")(torch.randn(1, 16)).shape == (1, 1, 32, 32)
    assert "fid10_10" in (run / "log.txt").read_text()


def test_missing_fid_weights_fail_before_training(tmp_path):
    result = train(tmp_path, "metrics.names=[fid20_20]", "metrics.fid_weights=/nonexistent.safetensors")
    assert result.returncode == 2 and "FID weights '/nonexistent.safetensors' do not exist" in result.stderr
    assert not list((tmp_path / "runs").glob("*/stats.jsonl"))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_with_r1_trains_finitely(tmp_path, precision):
    result = train(
        tmp_path, f"train.mixed_precision={precision}", "train.r1_gamma=1", "train.r1_interval=2", "train.kimg=1"
    )
    assert result.returncode == 0, result.stderr
    stats = [json.loads(line) for line in (only_run(tmp_path) / "stats.jsonl").read_text().splitlines()]
    assert all(s["nan_skips"] == 0 and s["r1"] is not None and s["r1"] >= 0 for s in stats)


def test_nan_guard_skips_counts_and_stops_with_a_checkpoint(tmp_path):
    result = train(tmp_path, "train.d_lr=1e37", "train.g_lr=1e37", "train.nan_patience=5")
    assert result.returncode == 3, result.stderr
    assert "training diverged: 5 steps in a row" in result.stderr and "Traceback" not in result.stderr
    run = only_run(tmp_path)
    checkpoints = list((run / "checkpoints").glob("checkpoint-*"))
    assert checkpoints
    progress = json.loads(sorted(checkpoints)[-1].joinpath("progress.json").read_text())
    assert progress["nan_skips"] >= 5 and progress["consecutive_bad"] == 5


@pytest.mark.parametrize(
    "kind,extra,split",
    [
        ("scs", (), "8 per process x 2 x 1"),
        ("cosine", (), "8 per process x 2 x 1"),
        ("conv", (), "8 per process x 2 x 1"),
        # G's gradients are averaged by the trainer, not by DDP, when the G step reuses the D step's fakes;
        # LeCam's mean logits are reduced over the processes; a conditional D gets each process's labels
        (
            "scs",
            ("train.share_fakes=true", "train.batch_gpu=4", "train.lecam=0.3", "model.num_classes=10"),
            "4 per process x 2 x 2",
        ),
    ],
    ids=["scs", "cosine", "conv", "scs-conditional-shared-fakes-accumulated"],
)
def test_two_processes_under_accelerate_end_identical(tmp_path, kind, extra, split):
    """Every arm, the DCGAN's batch norm included, ends with identical replicas (weights and buffers)."""
    cmd = [
        *two_process_launch(),
        "-m",
        "scs_gan",
        "train",
        "--config",
        SMOKE,
        f"train.runs_dir={tmp_path / 'runs'}",
        f"model.g.kind={kind}",
        f"model.d.kind={kind}",
        "train.kimg=1" if kind == "scs" else "train.kimg=0.5",
        "train.r1_gamma=1",
        "train.r1_interval=4",
        *extra,
    ]
    environment = {**env(tmp_path), "ACCELERATE_USE_CPU": "true"}
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=environment, check=False)
    assert result.returncode == 0, launch_failure(result)
    run = only_run(tmp_path)
    final = json.loads((run / "final.json").read_text())
    assert final["processes"] == 2 and final["replicas_identical"] is True
    assert f"2 process(es) on cpu, batch 16 = {split} accumulation" in (run / "log.txt").read_text()
    stats = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert all(s["r1"] is not None for s in stats)


CONFIG_ERRORS = [
    (("model.g.chanels=8",), "unknown config key 'model.g.chanels'; did you mean 'model.g.channels'?"),
    (("train.batch=many",), "train.batch must be an integer"),
    (("model.d.kind=sharp",), "model.d.kind must be one of"),
    (("train.batch=10", "train.batch_gpu=4"), "must be a multiple of train.batch_gpu"),
    (("--config", "missing.yaml"), "config file 'missing.yaml' does not exist"),
    (("--resume", "latest"), "found no checkpoint"),
    (("data.name=folder", "data.path=no/such/folder"), "data.path 'no/such/folder' does not exist"),
]


def test_a_config_error_is_one_sentence_from_the_command(tmp_path):
    """The first error end to end, in its own process: exit 2 and one line, no traceback."""
    args, message = CONFIG_ERRORS[0]
    result = train(tmp_path, *args, timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("args,message", CONFIG_ERRORS)
def test_config_errors_are_one_sentence(tmp_path, monkeypatch, capsys, args, message):
    """Every error through the command's entry point in this process (a process each would cost seconds of
    imports; the one above checks the process itself). A run that fails before its first step leaves no run
    directory behind (the batch split and the data fail after it was made)."""
    from scs_gan.cli import main
    from scs_gan.training.rundir import find_run_dirs

    monkeypatch.setenv("SCS_GAN_CACHE", str(tmp_path / "cache"))
    code = main(["train", "--config", SMOKE, f"train.runs_dir={tmp_path / 'runs'}", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert find_run_dirs(tmp_path / "runs") == []


def test_dry_run_prints_the_resolved_config(tmp_path, monkeypatch, capsys):
    from scs_gan.cli import main

    monkeypatch.setenv("SCS_GAN_CACHE", str(tmp_path / "cache"))
    assert (
        main(["train", "--config", SMOKE, f"train.runs_dir={tmp_path / 'runs'}", "--dry-run", "model.g.channels=12"])
        == 0
    )
    out = capsys.readouterr().out
    assert "channels: 12" in out and "kind: scs" in out
    assert not (tmp_path / "runs").exists()
