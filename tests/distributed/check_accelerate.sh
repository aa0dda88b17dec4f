#!/usr/bin/env bash
# Distillation under `accelerate launch` on 2 GPUs, with DDP, FSDP and DeepSpeed ZeRO-3: a few steps of the tiny
# recipe each way, then verify_runs.py checks that both ranks trained (tokens seen = 2 x one rank's), that a
# complete checkpoint was written, and that the saved student loads and gives finite logits. The ZeRO-3 run
# partitions every parameter (zero3.json sets no persistence threshold, so even tiny ones are sharded) and is
# then resumed from its last checkpoint for three more steps. Not part of the CPU suite:
#   bash tests/distributed/check_accelerate.sh [WORK_DIR] [ddp] [fsdp] [zero3]     (default: all three)
set -euo pipefail
work=${1:-/tmp/apriel-h1-distributed}
shift || true
runs=("$@")
[[ ${#runs[@]} -gt 0 ]] || runs=(ddp fsdp zero3)
rm -rf "$work"
python3 -m recipes.tiny_teacher --output "$work/teacher"
python3 -m conversion.convert --teacher "$work/teacher" --output "$work/student" --mamba-layers 1,3
common=(--config recipes/configs/distill_tiny.yaml --set "teacher=$work/teacher" --set "student=$work/student"
        --set max_steps=6 --set save_steps=3 --set eval_examples=0 --set synthetic_examples=256
        --set max_seq_length=256 --set per_device_batch_size=4 --set logging_steps=1)
wants() { [[ " ${runs[*]} " == *" $1 "* ]]; }
if wants ddp; then
  accelerate launch --num_processes 2 --multi_gpu --mixed_precision no \
    recipes/distill_stage.py "${common[@]}" --set "output_dir=$work/ddp"
fi
if wants fsdp; then
  accelerate launch --num_processes 2 --use_fsdp --mixed_precision no --fsdp_sharding_strategy FULL_SHARD \
    --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP \
    --fsdp_state_dict_type FULL_STATE_DICT --fsdp_use_orig_params true \
    recipes/distill_stage.py "${common[@]}" --set "output_dir=$work/fsdp"
fi
if wants zero3; then
  zero3=(--num_processes 2 --use_deepspeed --deepspeed_config_file tests/distributed/zero3.json
         --mixed_precision no)
  accelerate launch "${zero3[@]}" recipes/distill_stage.py "${common[@]}" --set "output_dir=$work/zero3"
  accelerate launch "${zero3[@]}" recipes/distill_stage.py "${common[@]}" --set "output_dir=$work/zero3" \
    --set max_steps=9 --resume
fi
python3 tests/distributed/verify_runs.py "${runs[@]/#/$work/}"
