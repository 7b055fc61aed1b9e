#!/usr/bin/env bash
# Train on several GPUs of one machine with Hugging Face Accelerate (one process per GPU).
#   scripts/launch_multi_gpu.sh 4 --config configs/cifar10.yaml train.kimg=10000
# train.batch is the total over all GPUs; each process gets train.batch / N (or train.batch_gpu).
# Multi-node: run the same command on every node with --num_machines, --machine_rank and
# --main_process_ip/--main_process_port added (see `accelerate launch --help`).
set -euo pipefail
gpus=${1:?usage: $0 NUM_GPUS [scs-gan train arguments...]}
shift
exec accelerate launch --multi_gpu --num_processes "$gpus" --num_machines 1 --mixed_precision no \
    --dynamo_backend no -m scs_gan train "$@"
