#!/usr/bin/env bash
# Runs the 2D records on the new models (from /work/runs/{flow,ddpm}_2d/model.pt) in a frozen worktree:
#   records_2d.sh STEP...   (generalisation sampling guidance interplane denoising)
set -u
W=/work/runs/code_rec
if [ ! -d $W ]; then
  git -C /work/main worktree add --detach $W HEAD -q && ln -s /work/main/bundle/data $W/bundle/data
  cp /work/runs/flow_2d/model.pt $W/bundle/models/model.pt && cp /work/runs/ddpm_2d/model.pt $W/bundle/models/model_ddpm.pt
fi
cd $W && . /work/main/.venv/bin/activate && export OMP_NUM_THREADS=${THREADS:-1}
mkdir -p /work/runs/rec
for step in "$@"; do
  start=$(date +%s)
  case $step in
    generalisation) python bench/generalisation.py --out_dir bundle/docs/records --work_dir /work/runs/rec/generalisation_runs ;;
    sampling) python bench/sampling.py --case_stride 4 --overrides '{"diversity_cases": 8}' --out_dir bundle/docs/records --work_dir /work/runs/rec/sampling_runs ;;
    guidance) python bench/guidance.py --case_stride 4 --out_dir bundle/docs/records --work_dir /work/runs/rec/guidance_runs ;;
    interplane) python bench/interplane.py --out_dir bundle/docs/records --work_dir /work/runs/rec/interplane_runs ;;
    denoising) python bench/denoising.py --out_dir bundle/docs/records --work_dir /work/runs/rec/denoising_runs ;;
  esac > /work/runs/rec_$step.log 2>&1
  echo "$step rc $? $(( $(date +%s) - start )) s" >> /work/runs/rec_done.log
done
