"""How the tests start real multi-process jobs: `accelerate launch` with two CPU processes (gloo)."""

from __future__ import annotations

import sys

TWO_PROCESS_LAUNCH = [
    sys.executable,
    "-m",
    "accelerate.commands.launch",
    "--multi_gpu",
    "--num_processes",
    "2",
    "--num_machines",
    "1",
    "--mixed_precision",
    "no",
    "--dynamo_backend",
    "no",
]
