"""How the tests start real multi-process jobs: `accelerate launch` with two CPU processes (gloo)."""

from __future__ import annotations

import socket
import subprocess
import sys


def _free_port() -> int:
    """A TCP port free now, for the launch's rendezvous: test workers running side by side (pytest -n) must
    not share accelerate's default port 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_process_launch() -> list[str]:
    """The command that starts two CPU processes under ``accelerate launch``, with a rendezvous port free now:
    chosen per launch, not once per test process, so that no port picked long ago can meanwhile have become
    another socket's (another launch's connections among them)."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--main_process_port",
        str(_free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]


def launch_failure(result: subprocess.CompletedProcess, limit: int = 3000) -> str:
    """What a failed two-process launch printed, for an assertion message: the first lines (where the
    processes' own errors are, before the launcher's traceback and summary) and the last."""
    text = result.stderr or ""
    if len(text) <= 2 * limit:
        return text
    return f"{text[:limit]}\n[... {len(text) - 2 * limit} characters ...]\n{text[-limit:]}"
