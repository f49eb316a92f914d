#!/bin/bash
# The same crl fit without SLURM: run this script on every node. torchrun starts one process per GPU and sets
# RANK, WORLD_SIZE, MASTER_ADDR, ...; Lightning reads them (TorchElasticEnvironment) and launches nothing itself.
#
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 bash examples/multinode/torchrun.sh     # on node0
#   NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 bash examples/multinode/torchrun.sh     # on node1
#
# GPUS (default 4) is the GPUs per node, CONFIG the config (default examples/configs/cifar10_resnet_crl.yaml);
# further arguments go to `crl fit` (e.g. --ckpt_path last to resume). `batch_size` is per process.
set -euo pipefail
NNODES=${NNODES:-2}
GPUS=${GPUS:-4}

torchrun --nnodes "$NNODES" --nproc-per-node "$GPUS" --node-rank "${NODE_RANK:?set NODE_RANK (0 on MASTER_ADDR)}" \
    --master-addr "${MASTER_ADDR:?set MASTER_ADDR (the first node)}" --master-port "${MASTER_PORT:-29500}" \
    -m crl_lightning fit --config "${CONFIG:-examples/configs/cifar10_resnet_crl.yaml}" \
    --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS" --trainer.strategy ddp "$@"
