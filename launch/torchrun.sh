#!/usr/bin/env bash
# Multi-node, multi-GPU training with torchrun: run this same command on every node.
#   NNODES=2 GPUS_PER_NODE=8 NODE_RANK=0 MASTER_ADDR=node0 launch/torchrun.sh \
#       --config configs/cc3m/pretrain_badnet.yaml [--config configs/strategies/deepspeed_zero2.yaml]
# Lightning reads the rank and world size that torchrun sets; trainer.num_nodes and trainer.devices
# are set here to match, so the config need not change between machines. The shard check fails early
# when the shards are fewer than nodes × GPUs × data workers.
set -euo pipefail
NNODES=${NNODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-$(nvidia-smi -L | wc -l)}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
cd "$(dirname "$0")/.."
exec torchrun --nnodes "$NNODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    main.py fit "$@" --trainer.num_nodes "$NNODES" --trainer.devices "$GPUS_PER_NODE"
