"""The ``scs-gan`` command: help, the layer benchmark, and one-sentence errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "scs_gan", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_help_from_module_and_console_script():
    result = run("--help")
    assert result.returncode == 0 and "bench" in result.stdout
    script = shutil.which("scs-gan", path=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"])
    if script is None:
        pytest.skip("the scs-gan console script is not installed in this environment")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and "bench" in result.stdout


def test_bench_prints_ratios_against_targets(tmp_path):
    out = tmp_path / "bench.json"
    result = run("bench", "--batch", "4", "--repeats", "2", "--only", "32->64", "--json", str(out))
    assert result.returncode == 0, result.stderr
    assert "D 32->64 @32 k4s2" in result.stdout
    assert "median time ratio, >= 32 input channels" in result.stdout and "target <= 1.25" in result.stdout
    assert "saved-bytes ratio" in result.stdout
    # what it is doing, with a rate and an ETA, on stderr
    assert re.search(
        r"timing SCS layers against torch layers: .*1/1 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(layer/s|s/layer)", result.stderr
    )
    record = json.loads(out.read_text())
    assert record["results"][0]["name"] == "D 32->64 @32 k4s2" and record["results"][0]["scs_ms"] > 0
    assert set(record["summary"]) == {
        "median time ratio, >= 32 input channels",
        "time ratio, first layer",
        "median saved-bytes ratio",
        "median sharpen on / off",
    }


def test_bench_times_the_gemm_routes_beside_aten():
    from scs_gan.nn import _kernels

    if _kernels.get() is None:
        pytest.skip("the fused kernels could not be built here (no compiler)")
    result = run("bench", "--batch", "4", "--repeats", "2", "--only", "64->1")
    assert result.returncode == 0, result.stderr
    assert "ATen vs GEMM route" in result.stdout
    routes = [line for line in result.stdout.splitlines() if line.startswith("  G 64->1 @16 k4s2")]
    assert [line.split()[4] for line in routes] == ["forward", "backward"]
    assert all("ATen" in line and "GEMM" in line and line.endswith("x") for line in routes)
    assert re.search(r"timing the GEMM routes against ATen: .*2/2 \[", result.stderr)
    plain = run("bench", "--batch", "4", "--repeats", "2", "--only", "32->64")
    assert plain.returncode == 0 and "GEMM route" not in plain.stdout  # no routed shape: no section


@pytest.mark.parametrize(
    "args,message",
    [
        (("bench", "--only", "no-such-layer"), "no benchmark case matches"),
        (("bench", "--device", "cuda:7"), "no such CUDA device"),
        (("bench", "--batch", "0"), "must be positive"),
    ],
)
def test_user_errors_are_one_sentence_without_traceback(args, message):
    result = run(*args)
    if "cuda" in " ".join(args) and "no such CUDA device" not in result.stderr and result.returncode == 0:
        pytest.skip("a CUDA device is present")
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_step_timing_scripts_run_and_refuse_unknown_case_names():
    """scripts/step_ratios.py (with a case whose GEMM routes are off) and scripts/channels_last_step.py."""
    root = Path(__file__).resolve().parents[1]

    def script(name: str, *args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, str(root / "scripts" / name), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)

    from scs_gan.nn import _kernels

    small = ["model.g.channels=8", "model.d.channels=8", "train.batch=8"]
    if _kernels.get() is not None:
        result = script(
            "step_ratios.py",
            "--steps",
            "1",
            "--warmup",
            "1",
            "--case",
            "a",
            *small,
            "--case",
            "b",
            *small,
            "--aten-convs",
            "b",
        )
        assert result.returncode == 0, result.stderr
        assert re.search(r"^a\s+[\d.]+ ms/step\s+1\.00x", result.stdout, re.M)
        assert re.search(r"^b\s+[\d.]+ ms/step", result.stdout, re.M)
        # one bar over every step of both cases: first, warm-up and timed
        assert re.search(r"timing training steps of a, b side by side: .*4/4 \[\d\d:\d\d<\d\d:\d\d", result.stderr)
    bad = script("step_ratios.py", "--steps", "1", "--case", "a", "--aten-convs", "c")
    assert bad.returncode != 0 and "--aten-convs names no --case: c" in bad.stderr
    result = script("channels_last_step.py", "--steps", "1", *small)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^nchw\s+[\d.]+ ms/step", result.stdout, re.M)
    assert re.search(r"^channels_last\s+[\d.]+ ms/step", result.stdout, re.M)
    assert re.search(r"timing NCHW and channels_last steps side by side: .*8/8 \[", result.stderr)
