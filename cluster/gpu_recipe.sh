#!/usr/bin/env bash
# The demo model's recipe on one lent GPU machine (PyTorch only, no network), in one call.
#
#   bash cluster/gpu_recipe.sh prepare [SCENES]      # here, with the full install (README command 1)
#   bash cluster/gpu_recipe.sh train OUT [FLAGS...]  # there: FLAGS are jobs/train_demo.py train's
#
# `prepare` packs the labelled scenes (default ../shared/data/naip-fields, about 12 MB) into
# .gpu/packed and downloads the transformers wheel this project is tested with into .gpu/wheels
# (the GPU image holds an older transformers; its tokenizers, huggingface_hub and safetensors
# satisfy this one). .gpu/ is git-ignored: carry it. `train` installs the wheel, runs the recipe
# from the shipped demo model on .gpu/packed, chooses the model's boundary_bias on the training
# scenes (`train_demo.py calibrate`), times the mapping decoder on the GPU (`benchmarks/mapping.py`
# on 8 demo chips saved by `prepare`, with and without drafts: the lines issue 23 needs), and leaves one archive,
# OUT/run.tar (model/, metrics.json, curves.png, log.txt, mapping.json): one file to bring back,
# partial or not. The command the
# demo model's card gives for a 15-minute lease:
#
#   bash cluster/gpu_recipe.sh train $OUT --minutes 5 --sft-steps 20000 --batch-size 64 --eval-every 250
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
prepare)
  python=.venv/bin/python
  "$python" jobs/train_demo.py pack --data "${2:-../shared/data/naip-fields}" --out .gpu/packed
  "$python" benchmarks/mapping.py --chips 8 --save-chips .gpu/mapping_chips.npy
  version=$("$python" -c "import transformers; print(transformers.__version__)")
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .gpu/wheels "transformers==$version"
  du -sh .gpu/packed .gpu/wheels
  ;;
train)
  [ $# -ge 2 ] || { echo "usage: $0 train OUT [FLAGS...]" >&2; exit 2; }
  out=$2
  shift 2
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .gpu/wheels/*.whl
  export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
  mkdir -p "$out/run"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader >"$out/run/log.txt" 2>&1 || true
  set +e
  python3 jobs/train_demo.py train --data .gpu/packed --out "$out/run" "$@" 2>&1 | tee -a "$out/run/log.txt"
  status=${PIPESTATUS[0]}
  if [ -f "$out/run/model/magseg.json" ]; then
    python3 jobs/train_demo.py calibrate --data .gpu/packed --model "$out/run/model" 2>&1 | tee -a "$out/run/log.txt"
  fi
  # issue 23's GPU lines: the mapping decoder against naive generate, the shipped demo model, same
  # chips; with drafts (the default), then the actor alone without drafts (no baseline: the lease's
  # time), so the lines show what drafts do on a GPU
  for flags in "--draft-tokens 12" "--draft-tokens 0 --baseline-every 0"; do
    python3 benchmarks/mapping.py --chips-file .gpu/mapping_chips.npy --reducer-px 0 $flags \
      >>"$out/run/mapping.json" 2>>"$out/run/log.txt"
  done
  tar -C "$out" -cf "$out/run.tar" run && rm -rf "$out/run"
  exit "$status"
  ;;
*)
  echo "usage: $0 prepare [SCENES] | train OUT [FLAGS...]" >&2
  exit 2
  ;;
esac
