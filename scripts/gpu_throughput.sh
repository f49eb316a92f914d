#!/usr/bin/env bash
# Training throughput on one GPU, in one command: Lightning + ImageClassifier + CRL against a plain PyTorch loop,
# and CRL against CE inside the same Trainer (benchmarks/train_step.py), with bf16-mixed, channels_last and
# torch.compile, for
#   1. cifar_resnet18 at 32 px, batch 512, in-memory uint8 images cropped/flipped/normalised on the GPU;
#   2. torchvision ResNet-50 at 224 px, batch 256, synthetic in-memory images (normalised on the GPU).
# Prints two tables (images/s, min-max over 5 interleaved repeats, GPU utilisation from nvidia-smi) and the
# ratios. Each network is compiled once per variant (3 per model). Budget: <= 6 min on one H200.
#
#   scripts/gpu_throughput.sh [--key value ...]      # extra arguments go to both runs and win
#
# The tests run it on the CPU at toy size: --device cpu --precision 32 --no-compile --backbone preact_resnet20
# --image-size 16 --batch-size 8 --steps 1 --warmup 1. Environment: PYTHON (default python).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
common=(--device cuda --precision bf16 --channels-last --compile --repeats 5)
${PYTHON:-python} benchmarks/train_step.py "${common[@]}" --backbone cifar_resnet18 --image-size 32 \
    --batch-size 512 --steps 30 --warmup 8 "$@"
echo
${PYTHON:-python} benchmarks/train_step.py "${common[@]}" --backbone torchvision:resnet50 --image-size 224 \
    --batch-size 256 --steps 15 --warmup 6 "$@"
echo
echo "gpu_throughput: $(( $(date +%s) - start )) s in all"
