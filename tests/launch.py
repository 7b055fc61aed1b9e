"""How the tests start real multi-process jobs: `accelerate launch` with two CPU processes (gloo)."""

from __future__ import annotations

import socket
import sys


def _free_port() -> int:
    """A TCP port free now, for the launch's rendezvous: test workers running side by side (pytest -n) must
    not share accelerate's default port 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TWO_PROCESS_LAUNCH = [
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
