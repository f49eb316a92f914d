#!/usr/bin/env bash
# CE vs CRL on real CIFAR-10 on one GPU, >= 10 paired seeds, in one command; the tarball is the only input.
#
#   scripts/gpu_study.sh PATH/cifar10_jpeg.tar.gz [OUT] [--key value ...]
#
# Extracts the tarball into a temporary folder (deleted at the end; the tarball is not modified), then runs
#   crl study --config examples/configs/cifar10_jpeg_gpu.yaml --criteria ce crl --seeds $SEEDS --out OUT
# (cifar_resnet18, full 50,000-image train set, bf16-mixed, channels_last, torch.compile, data decoded once
# and augmented on the GPU). OUT defaults to runs/cifar10_gpu; it then holds study.md, study.json and
# curves.png. Environment: SEEDS (default 0-9), PYTHON (default python). Extra arguments go to every run,
# e.g. --trainer.max_epochs 4; the tests run this script on the CPU at toy size with
#   --trainer.accelerator cpu --trainer.precision 32-true --model.init_args.compile false.
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
    echo "usage: $0 PATH/cifar10_jpeg.tar.gz [OUT] [--key value ...] (got: ${1:-nothing})" >&2
    exit 2
fi
tarball=$1
shift
out=runs/cifar10_gpu
if [ $# -gt 0 ] && [[ $1 != --* ]]; then
    out=$1
    shift
fi
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
tar xzf "$tarball" -C "$work"
data=$(dirname "$(find "$work" -maxdepth 3 -type d -name train | head -n 1)")
echo "gpu_study: extracted $tarball into $data in $(( $(date +%s) - start )) s"
${PYTHON:-python} -m crl_lightning study --config examples/configs/cifar10_jpeg_gpu.yaml --criteria ce crl \
    --seeds "${SEEDS:-0-9}" --out "$out" --data.init_args.data_dir "$data" --trainer.enable_progress_bar false "$@"
echo "gpu_study: whole study $(( $(date +%s) - start )) s; results in $out/study.md"
