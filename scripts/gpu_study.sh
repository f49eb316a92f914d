#!/usr/bin/env bash
# CE vs CRL on real CIFAR-10 on one GPU, >= 10 paired seeds, in windows of a few minutes; the tarball is the input.
#
#   scripts/gpu_study.sh PATH/cifar10_jpeg.tar.gz [OUT] [--budget-min M] [--key value ...]
#
# Extracts the tarball into a temporary folder (deleted at the end; the tarball is not modified), then runs
#   crl study --config examples/configs/cifar10_jpeg_gpu.yaml --criteria $CRITERIA --seeds $SEEDS --out OUT
# (cifar_resnet18, full 50,000-image train set, bf16-mixed, channels_last, torch.compile, data decoded once
# and augmented on the GPU). OUT defaults to runs/cifar10_gpu; it then holds study.md, study.json,
# curves.png and paired_differences.png.
#
# Wall budget: --budget-min M (default 8, minutes, counted from the start of this script, extraction
# included) is passed on to `crl study --budget-min`, which stops cleanly between runs when the next run
# would end past it, writes the partial study.md/json (marked incomplete) and exits with code 3; this script
# then exits 3 too. Run the same command again to resume: finished runs are reused. For windows of 10 minutes
# per command, loop until it is done:
#   while scripts/gpu_study.sh cifar10_jpeg.tar.gz OUT; [ $? -eq 3 ]; do :; done
# The first run's torch.compile and warm-up time (its first epoch against its later ones) is printed.
#
# Environment: SEEDS (default 0-9), CRITERIA (default "ce crl"), PYTHON (default python). Extra arguments go
# to every run, e.g. --trainer.max_epochs 4; the tests run this script on the CPU at toy size with
#   --trainer.accelerator cpu --trainer.precision 32-true --model.init_args.compile false.
set -euo pipefail
start=$(date +%s)
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 PATH/cifar10_jpeg.tar.gz [OUT] [--budget-min M] [--key value ...] (got: ${1:-nothing})" >&2
    exit 2
fi
tarball=$1
shift
out=runs/cifar10_gpu
if [ $# -gt 0 ] && [[ $1 != --* ]]; then
    out=$1
    shift
fi
budget=8
if [ $# -gt 0 ] && [ "$1" = --budget-min ]; then
    if [ $# -lt 2 ]; then
        echo "usage: $0 PATH/cifar10_jpeg.tar.gz [OUT] [--budget-min M] [--key value ...] (--budget-min needs M)" >&2
        exit 2
    fi
    budget=$2
    shift 2
fi
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar xzf "$tarball" -C "$work"
data=$(dirname "$(find "$work" -maxdepth 3 -type d -name train | head -n 1)")
elapsed=$(( $(date +%s) - start ))
echo "gpu_study: extracted $tarball into $data in $elapsed s"
left=$(awk -v b="$budget" -v e="$elapsed" 'BEGIN { l = b - e / 60; printf "%.3f", (l > 0.001 ? l : 0.001) }')
rc=0
# shellcheck disable=SC2086  # CRITERIA is a list of words
${PYTHON:-python} -m crl_lightning study --config examples/configs/cifar10_jpeg_gpu.yaml --criteria ${CRITERIA:-ce crl} \
    --seeds "${SEEDS:-0-9}" --out "$out" --budget-min "$left" --data.init_args.data_dir "$data" \
    --trainer.enable_progress_bar false "$@" || rc=$?
if [ "$rc" -eq 3 ]; then
    echo "gpu_study: stopped at the $budget min budget after $(( $(date +%s) - start )) s; partial results in" \
         "$out/study.md; run the same command again to resume"
    exit 3
fi
[ "$rc" -eq 0 ] || exit "$rc"
echo "gpu_study: whole study $(( $(date +%s) - start )) s; results in $out/study.md"
