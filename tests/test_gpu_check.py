"""scripts/gpu_check.sh can only run in full on a CUDA machine; its arguments and its summary are checked
here, on any machine, so that it does not rot between GPU sessions."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from scs_gan.nn import bench
from scs_gan.training import bench as train_bench

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.sh"


def _check(*args: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize(
    "args,message",
    [
        (("--bogus",), "unknown argument '--bogus'"),
        (("--out",), "usage:"),
        (("--device", "tpu"), "--device must be cuda or cpu"),
        (("--train-seconds", "soon"), "--train-seconds must be a whole number"),
        (("--step-timeout", "0"), "--step-timeout must be a whole number of seconds above 0"),
        (("--step-timeout", "1m"), "--step-timeout must be a whole number of seconds above 0"),
    ],
)
def test_bad_arguments_are_refused_with_the_usage(args, message):
    result = _check(*args)
    assert result.returncode == 2 and message in result.stderr


def test_help_and_the_missing_gpu():
    result = _check("--help")
    assert result.returncode == 0 and "markdown summary" in result.stdout and "--quick" in result.stdout
    if not torch.cuda.is_available():
        result = _check("--out", "/nonexistent/never-created")
        assert result.returncode == 2 and "no CUDA device is available here" in result.stderr


def _summary_module():
    spec = importlib.util.spec_from_file_location("gpu_summary", REPO / "scripts" / "gpu_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_summary_reports_every_step_from_real_benchmark_outputs(tmp_path):
    (tmp_path / "device.txt").write_text("torch 2.x\ndevice: NVIDIA Test GPU, 80 GiB\n")
    (tmp_path / "steps.tsv").write_text(
        "cuda-tests\t0\t12\tpython -m pytest -q -k cuda\n"
        "bench-bf16\t0\t30\tpython -m scs_gan bench --autocast bf16\n"
        "bench-fp16-compiled\t1\t5\tpython -m scs_gan bench --autocast fp16 --compile\n"
        "train\t130\t120\ttimeout -s INT 120 python -m scs_gan train\n"
        "train-bench-bf16-compiled\t124\t600\tpython -m scs_gan bench train --compile\n"
    )
    assert bench.main(repeats=1, only="D 32->64", json_path=str(tmp_path / "bench-bf16.json")) == 0
    lines = train_bench.run(["train.batch=8", "model.g.channels=4", "model.d.channels=4"], steps=1, warmup=1)
    (tmp_path / "train-bench-fp32.txt").write_text("\n".join(lines) + "\n")
    compiled = [  # what `bench train --compile` prints (a compiled run takes minutes even at this size)
        "scs+compile       20.0 ms/step    3200.0 images/s   0.80x DCGAN time",
        "SCS-GAN step / DCGAN step: 1.05 (target <= 1.20, goal 1.10)",
        "compiled step / eager step (inductor): scs 0.80x, cosine 0.82x, conv 0.90x",
    ]
    (tmp_path / "train-bench-bf16-compiled.txt").write_text("\n".join(compiled) + "\n")
    run = tmp_path / "runs" / "00000-synthetic32-scs"
    run.mkdir(parents=True)
    (run / "stats.jsonl").write_text(
        json.dumps({"kimg": 12.5, "time_s": 118, "images_per_s": 4321, "peak_mem_mb": 900})
    )
    summary = _summary_module().write_summary(tmp_path).read_text()
    assert "NVIDIA Test GPU" in summary
    assert "| cuda-tests | ok |" in summary and "| train | ok |" in summary  # SIGINT ends the timed run
    assert "| bench-fp16-compiled | FAILED (exit 1) |" in summary
    assert "| train-bench-bf16-compiled | TIMED OUT (exit 124) |" in summary
    assert "Failed steps: bench-fp16-compiled, train-bench-bf16-compiled" in summary
    median = json.loads((tmp_path / "bench-bf16.json").read_text())["summary"][
        "median time ratio, >= 32 input channels"
    ]
    assert f"| bench-bf16 | {median:.2f} (" in summary
    ratio = next(line for line in lines if line.startswith("SCS-GAN step")).split(":")[1].split("(")[0].strip()
    assert f"| train-bench-fp32 | {ratio} (" in summary
    assert "| train-bench-bf16-compiled | 1.05 (meets <= 1.2) | scs+compile 20.0 ms/step; compiled step" in summary
    assert "12.5 kimg in 118 s of training, 4321 images/s" in summary


def test_the_summary_of_an_empty_folder_says_nothing_ran(tmp_path):
    summary = _summary_module().write_summary(tmp_path).read_text()
    assert "no step ran" in summary and "no layer benchmark finished" in summary
    assert "no training statistics were written" in summary
