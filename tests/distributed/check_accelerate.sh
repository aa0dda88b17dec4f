#!/usr/bin/env bash
# Distillation under `accelerate launch` on 2 GPUs, with DDP and with FSDP: a few steps of the tiny recipe each
# way, then verify_runs.py checks that both ranks trained (tokens seen = 2 x one rank's), that a complete
# checkpoint was written, and that the saved student loads and gives finite logits. Not part of the CPU suite:
#   bash tests/distributed/check_accelerate.sh [WORK_DIR]
set -euo pipefail
work=${1:-/tmp/apriel-h1-distributed}
rm -rf "$work"
python3 -m recipes.tiny_teacher --output "$work/teacher"
python3 -m conversion.convert --teacher "$work/teacher" --output "$work/student" --mamba-layers 1,3
common=(--config recipes/configs/distill_tiny.yaml --set "teacher=$work/teacher" --set "student=$work/student"
        --set max_steps=6 --set save_steps=3 --set eval_examples=0 --set synthetic_examples=256
        --set max_seq_length=256 --set per_device_batch_size=4 --set logging_steps=1)
accelerate launch --num_processes 2 --multi_gpu --mixed_precision no \
  recipes/distill_stage.py "${common[@]}" --set "output_dir=$work/ddp"
accelerate launch --num_processes 2 --use_fsdp --mixed_precision no --fsdp_sharding_strategy FULL_SHARD \
  --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
  --fsdp_state_dict_type FULL_STATE_DICT --fsdp_use_orig_params true \
  recipes/distill_stage.py "${common[@]}" --set "output_dir=$work/fsdp"
python3 tests/distributed/verify_runs.py "$work/ddp" "$work/fsdp"
