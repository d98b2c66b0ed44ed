#!/usr/bin/env bash
# Resumes both 2D trainings (flow, DDPM) from /work/runs/{flow,ddpm}_2d/checkpoint.pt to EPOCHS, one thread each;
# EXTRA holds further overrides (e.g. the cosine tail: --lr_schedule cosine --lr_decay_start 13110).
set -u
EPOCHS=${EPOCHS:-80}
EXTRA=${EXTRA:-}
cd /work/runs/code_2d && . /work/main/.venv/bin/activate
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
python -m monai.bundle run --config_file bundle/configs/train.json --output_dir /work/runs/flow_2d \
  --train#trainer#max_epochs $EPOCHS $EXTRA > /work/runs/flow_2d.log 2>&1 &
python -m monai.bundle run --config_file "['bundle/configs/train.json','bundle/configs/train_ddpm.json']" \
  --output_dir /work/runs/ddpm_2d --train#trainer#max_epochs $EPOCHS $EXTRA > /work/runs/ddpm_2d.log 2>&1 &
wait
