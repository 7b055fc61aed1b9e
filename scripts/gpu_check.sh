#!/usr/bin/env bash
# The GPU check: on a CUDA machine, everything the project wants measured there, in one command, ending in a
# markdown summary that names the device.
#
#   scripts/gpu_check.sh [--out DIR] [--train-seconds N] [--step-timeout N] [--quick] [--device cuda|cpu]
#
# Steps (each one's output is kept in DIR/<step>.txt; a failing step is recorded and the others still run):
#   cuda-tests    the tests that need a CUDA device (autocast numerics, augmentation on the GPU)
#   bench-*       `scs-gan bench` in bf16 and fp16 (layer time ratios vs torch layers)
#   train-bench-* `scs-gan bench train` in bf16 and fp32 (SCS-GAN / DCGAN step ratio)
#   train         the default config on synthetic data for N seconds (default 120), stopped by SIGINT
#   *-compiled    last, so that slow compilation cannot starve the eager steps: `bench train` in bf16 with
#                 each kind also compiled (train.compile), side by side with the eager kinds, then
#                 `scs-gan bench` in bf16 and fp16 with every layer compiled
# then DIR/summary.md (scripts/gpu_summary.py). Each step other than train is stopped after --step-timeout
# seconds (default 600) and reported as timed out. --quick makes every step tiny and skips compilation, to
# check the plumbing on any machine; --device cpu runs the steps on the CPU (only sensible with --quick).
set -uo pipefail

usage() {
    echo "usage: $0 [--out DIR] [--train-seconds N] [--step-timeout N] [--quick] [--device cuda|cpu]" >&2
    exit 2
}

out="gpu-check-$(date +%Y%m%d-%H%M%S)"
train_seconds=120
step_timeout=600
quick=0
device=cuda
while [ $# -gt 0 ]; do
    case "$1" in
        --out) [ $# -ge 2 ] || usage; out=$2; shift 2 ;;
        --train-seconds) [ $# -ge 2 ] || usage; train_seconds=$2; shift 2 ;;
        --step-timeout) [ $# -ge 2 ] || usage; step_timeout=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        --device) [ $# -ge 2 ] || usage; device=$2; shift 2 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "$0: unknown argument '$1'" >&2; usage ;;
    esac
done
case "$device" in cuda|cpu) ;; *) echo "$0: --device must be cuda or cpu, got '$device'" >&2; exit 2 ;; esac
case "$train_seconds" in ''|*[!0-9]*) echo "$0: --train-seconds must be a whole number" >&2; exit 2 ;; esac
case "$step_timeout" in ''|*[!0-9]*|0) echo "$0: --step-timeout must be a whole number of seconds above 0" >&2; exit 2 ;; esac

cd "$(dirname "$0")/.." || exit 2
python=${PYTHON:-python}
if [ "$device" = cuda ] && ! "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "$0: no CUDA device is available here; use --device cpu --quick to check the script itself" >&2
    exit 2
fi
mkdir -p "$out" || exit 2
: > "$out/steps.tsv"

# run NAME COMMAND...: keep the output, record the exit code and the seconds taken; a step still running after
# --step-timeout seconds gets SIGTERM (SIGKILL 10 s later) and exit code 124. The timed training run stops itself.
run() {
    local name=$1 start end code
    shift
    echo "== $name: $*"
    start=$(date +%s)
    if [ "$name" = train ]; then
        "$@" > "$out/$name.txt" 2>&1
    else
        timeout -k 10 "$step_timeout" "$@" > "$out/$name.txt" 2>&1
    fi
    code=$?
    end=$(date +%s)
    printf '%s\t%s\t%s\t%s\n' "$name" "$code" "$((end - start))" "$*" >> "$out/steps.tsv"
    tail -n 3 "$out/$name.txt"
}

"$python" - > "$out/device.txt" 2>&1 <<'EOF'
import platform, torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, Python {platform.python_version()}")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"device: {p.name}, {p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}")
else:
    print("device: CPU only")
EOF
(lscpu 2>/dev/null | grep -m1 'Model name' || true) >> "$out/device.txt"

if [ "$quick" = 1 ]; then
    bench=(--repeats 2 --only "D 32")
    train_bench=(--repeats 2 --batch 16)
    compiled=()
else
    bench=(--repeats 20)
    train_bench=(--repeats 30)
    compiled=(--compile)
fi
tests=(tests/nn/test_scs_numerics.py tests/training/test_augment.py)
run cuda-tests "$python" -m pytest -q -k cuda "${tests[@]}"
for precision in bf16 fp16; do
    run "bench-$precision" "$python" -m scs_gan bench --device "$device" --autocast "$precision" "${bench[@]}" \
        --json "$out/bench-$precision.json"
done
if [ "$device" = cpu ]; then export ACCELERATE_USE_CPU=true; fi
run train-bench-bf16 "$python" -m scs_gan bench train --autocast bf16 "${train_bench[@]}"
run train-bench-fp32 "$python" -m scs_gan bench train "${train_bench[@]}"
[ "$quick" = 1 ] && train_seconds=$((train_seconds < 15 ? train_seconds : 15))
# --preserve-status: the run's own exit code (130 after SIGINT, its checkpoint saved), not timeout's 124
run train timeout --preserve-status -k 60 -s INT "$train_seconds" "$python" -m scs_gan train data.name=synthetic \
    metrics.names=[] train.progress=false train.kimg=100000 "train.runs_dir=$out/runs"
if [ ${#compiled[@]} -gt 0 ]; then
    run train-bench-bf16-compiled "$python" -m scs_gan bench train --autocast bf16 "${train_bench[@]}" "${compiled[@]}"
    for precision in bf16 fp16; do
        run "bench-$precision-compiled" "$python" -m scs_gan bench --device "$device" --autocast "$precision" \
            "${bench[@]}" "${compiled[@]}" --json "$out/bench-$precision-compiled.json"
    done
fi
"$python" scripts/gpu_summary.py "$out" && echo "summary: $out/summary.md"
