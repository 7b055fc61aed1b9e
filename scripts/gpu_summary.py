"""Write the markdown summary of a scripts/gpu_check.sh run: python scripts/gpu_summary.py DIR -> DIR/summary.md.

Reads what the check left in DIR: device.txt, steps.tsv (step, exit code, seconds, command), bench-*.json
(`scs-gan bench --json`), train-bench-*.txt (`scs-gan bench train`) and runs/*/stats.jsonl (the timed
training run). Steps that did not run or failed are reported as such, never left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# The exit code a step may end with and still count as done: the timed training run is stopped by SIGINT.
EXPECTED_CODES = {"train": {0, 130}}
BENCH_GOAL, TRAIN_GOAL = 1.15, 1.2


def _steps(folder: Path) -> list[tuple[str, int, int, str]]:
    rows = []
    path = folder / "steps.tsv"
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    for line in lines:
        name, code, seconds, command = [*line.split("\t"), "", "", ""][:4]
        try:
            rows.append((name, int(code), int(seconds), command))
        except ValueError:
            rows.append((name, -1, 0, f"(unreadable line: {line!r})"))
    return rows


def _ok(name: str, code: int) -> bool:
    return code in EXPECTED_CODES.get(name, {0})


def _result(name: str, code: int) -> str:
    if _ok(name, code):
        return "ok"
    if code in (124, 137):  # timeout's codes for a step stopped at --step-timeout (SIGTERM, then SIGKILL)
        return f"TIMED OUT (exit {code})"
    return f"FAILED (exit {code})"


def _bench_rows(folder: Path) -> list[str]:
    rows = []
    for path in sorted(folder.glob("bench-*.json")):
        try:
            summary = json.loads(path.read_text(encoding="utf-8"))["summary"]
            median = summary["median time ratio, >= 32 input channels"]
        except (OSError, ValueError, KeyError, TypeError):
            rows.append(f"| {path.stem} | unreadable | | |")
            continue
        first = summary.get("time ratio, first layer", float("nan"))
        verdict = "meets" if median <= BENCH_GOAL else "misses"
        saved = summary.get("median saved-bytes ratio", float("nan"))
        rows.append(f"| {path.stem} | {median:.2f} ({verdict} <= {BENCH_GOAL}) | {first:.2f} | {saved:.2f} |")
    return rows


def _train_bench_rows(folder: Path) -> list[str]:
    rows = []
    for path in sorted(folder.glob("train-bench-*.txt")):
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        ratio = next(
            (line.split(":")[1].split("(")[0].strip() for line in lines if line.startswith("SCS-GAN step")), None
        )
        kinds = ("scs", "cosine", "conv")
        steps = [line for line in lines if line.split(" ")[0].removesuffix("+compile") in kinds]
        compiled = next((line for line in lines if line.startswith("compiled step / eager step")), None)
        if ratio is None:
            rows.append(f"| {path.stem} | did not finish | |")
            continue
        verdict = "meets" if float(ratio) <= TRAIN_GOAL else "misses"
        times = "; ".join(" ".join(s.split()[:3]) for s in steps)
        if compiled:
            times += f"; {compiled}"
        rows.append(f"| {path.stem} | {ratio} ({verdict} <= {TRAIN_GOAL}) | {times} |")
    return rows


def _training(folder: Path) -> str:
    stats = sorted(folder.glob("runs/*/stats.jsonl"))
    if not stats:
        return "no training statistics were written"
    records = []
    for line in stats[-1].read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    if not records:
        return "the training run wrote no complete tick"
    last = records[-1]
    return (
        f"{last.get('kimg', 0):.1f} kimg in {last.get('time_s', 0):.0f} s of training, "
        f"{last.get('images_per_s', 0):.0f} images/s in the last tick, peak memory {last.get('peak_mem_mb', 0):.0f} MiB"
    )


def write_summary(folder: Path) -> Path:
    """Write ``folder/summary.md`` from the check's outputs and return its path."""
    device = (folder / "device.txt").read_text(encoding="utf-8").strip() if (folder / "device.txt").is_file() else ""
    steps = _steps(folder)
    lines = ["# GPU check", "", "```", device or "(device unknown: device.txt missing)", "```", "", "## Steps", ""]
    lines += ["| step | result | seconds | command |", "|---|---|---|---|"]
    for name, code, seconds, command in steps:
        lines.append(f"| {name} | {_result(name, code)} | {seconds} | `{command}` |")
    if not steps:
        lines.append("| (none) | no step ran | | |")
    lines += ["", "## Layers (`scs-gan bench`): SCS time / torch time", ""]
    lines += ["| run | median, >= 32 input channels | first layer | saved bytes |", "|---|---|---|---|"]
    lines += _bench_rows(folder) or ["| (none) | no layer benchmark finished | | |"]
    lines += ["", "## Training step (`scs-gan bench train`): SCS-GAN / DCGAN", ""]
    lines += ["| run | ratio | ms/step |", "|---|---|---|"]
    lines += _train_bench_rows(folder) or ["| (none) | no training benchmark finished | |"]
    lines += ["", "## Default config on synthetic data", "", _training(folder), ""]
    failed = [name for name, code, _, _ in steps if not _ok(name, code)]
    lines.append(f"Failed steps: {', '.join(failed)} (see <step>.txt)." if failed else "Every step finished.")
    out = folder / "summary.md"
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out


if __name__ == "__main__":
    if len(sys.argv) != 2 or not Path(sys.argv[1]).is_dir():
        print("usage: python scripts/gpu_summary.py DIR (the folder scripts/gpu_check.sh wrote)", file=sys.stderr)
        sys.exit(2)
    write_summary(Path(sys.argv[1]))
