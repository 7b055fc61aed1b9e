#!/usr/bin/env bash
# Run N training processes on the CPU of one machine (gloo backend), e.g. to check a multi-process setup
# without GPUs. `accelerate launch --cpu --num_processes N` silently starts ONE process; this is the form
# that starts N connected ones.
#   scripts/launch_cpu_processes.sh 2 --config configs/smoke.yaml
set -euo pipefail
procs=${1:?usage: $0 NUM_PROCESSES [scs-gan train arguments...]}
shift
export ACCELERATE_USE_CPU=true OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
exec accelerate launch --multi_gpu --num_processes "$procs" --num_machines 1 --mixed_precision no \
    --dynamo_backend no -m scs_gan train "$@"
