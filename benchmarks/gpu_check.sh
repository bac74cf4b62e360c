#!/usr/bin/env bash
# The GPU check: one command, under 8 minutes on one GPU, one JSON file.
#
#   bash benchmarks/gpu_check.sh            # writes $OUT/gpu_check.json (else benchmarks/out/)
#
# What it measures (benchmarks/train_bench.py, see its docstring): train.py's own step for
# configs/resnet_unet.py (improved) and configs/upstream_resnet_unet.py at 256x256, batch 64,
# their default compute dtype ('auto': bfloat16 here): img/s (median of 3 runs of 20 steps),
# GFLOP/img, TFLOP/s, share of the dense bf16 peak, cold compile and the cached compile in a
# fresh process, peak memory; and, for resnet_unet, the train loader at 256x256 (workers: one
# per core but one) alone and feeding the step (input wait).
#
# The GPU host has no TensorFlow, TFDS, dlib or mediapipe, and no network: nothing here needs
# the first four, and what else is missing comes from wheels carried in benchmarks/wheels/
# (ignored by git), fetched beforehand on a machine with a package index:
#   pip download --only-binary=:all: --python-version 3.12 --no-deps \
#     --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d benchmarks/wheels \
#     ml-collections dm-pix grain array-record cloudpickle portpicker psutil pillow tqdm pyyaml
# and the photos come packed with their landmarks (4 MiB, ignored by git):
#   python benchmarks/packed_faces.py --source=../shared/data/lfw_gray \
#     --out=benchmarks/out/lfw_packed.npz
# GPU_CHECK_ARGS adds or overrides train_bench flags and GPU_CHECK_TIMEOUT the limit (470 s);
# a CPU dry run: GPU_CHECK_TIMEOUT=3000 \
#   GPU_CHECK_ARGS="--configs=resnet_unet --runlocal --size=64 --batch=8 --steps=2 --workers=1".
set -euo pipefail
cd "$(dirname "$0")/.."
out_dir="${OUT:-benchmarks/out}"
mkdir -p "$out_dir"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
start=$(date +%s)

# Modules the GPU host may lack -> the wheels that provide them.
declare -A wheel_of=(
  [ml_collections]=ml-collections [yaml]=pyyaml [dm_pix]=dm-pix [grain]=grain
  [array_record]=array-record [cloudpickle]=cloudpickle [portpicker]=portpicker
  [psutil]=psutil [PIL]=pillow [tqdm]=tqdm
)
missing=()
for module in "${!wheel_of[@]}"; do
  python -c "import $module" 2>/dev/null || missing+=("${wheel_of[$module]}")
done
if ((${#missing[@]})); then
  echo "Installing carried wheels: ${missing[*]}"
  python -m pip install --quiet --no-index --no-deps --find-links benchmarks/wheels "${missing[@]}"
fi

packed=benchmarks/out/lfw_packed.npz
loader_flag=()
if [[ -f $packed ]]; then
  loader_flag=(--loader="$packed")
else
  echo "No $packed: the loader is not measured."
fi

nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv \
  >"$out_dir/gpu_check_nvidia_smi.csv" 2>/dev/null || true
# shellcheck disable=SC2086  # GPU_CHECK_ARGS is a list of flags.
timeout "${GPU_CHECK_TIMEOUT:-470}" python benchmarks/train_bench.py \
  --configs=resnet_unet,upstream_resnet_unet --size=256 --batch=64 --steps=20 --repeats=3 \
  --workers=-1 --loader_batches=20 --timeout=300 "${loader_flag[@]}" \
  --json_out="$out_dir/gpu_check.json" ${GPU_CHECK_ARGS:-} 2>"$out_dir/gpu_check.log"
echo "gpu_check: $(($(date +%s) - start)) s; $out_dir/gpu_check.json"
