#!/usr/bin/env bash
# The GPU checks of one lent device machine, as one prepared script (the machine is lent for
# minutes: every stage has its own time limit, and results are packed before the optional ones).
#
# Runs in the repository root there, under the machine's own python3/torch, with:
#   .devdata/  the training pool (speechocean762 train.csv as 24-kbit/s Opus, LibriSpeech clips,
#              noises, RIRs): made by bench/device_data.py, because the machine takes 64 MiB
#   .whl/      wheels of the runtime dependencies its image lacks (soundfile, soxr, cffi, pycparser)
# Usage: bash bench/device_run.sh MINUTES COMMIT   (COMMIT: `git rev-parse --short HEAD` here, since the
# copy there has no git; writes to $OUT; then, here, unpack and score:
#   cat parts/run.tar.* | tar x && python bench/dev_protocol.py RECIPE --evaluate-only --label RUN)
set -u
MIN=${1:-5}
export SSLSPEAKER_BENCH_COMMIT=${2:-unknown}
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 SSLSPEAKER_DATA=$PWD/.devdata
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=$PWD/src:/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, soundfile, soxr; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

echo "== CUDA tests"  # the CUDA-only tests, and the trainer's own (resume, schedules) on the GPU
timeout 70 python3 -m pytest -q -p no:cacheprovider -n 4 tests/test_augment.py tests/test_features.py \
  tests/test_trainer.py tests/test_moco.py > "$OUT/tests.txt" 2>&1
echo "tests rc=$?"; tail -15 "$OUT/tests.txt"

echo "== training, $MIN min each, side by side on the one GPU"
COMMON=(train.compile=false train.threads=4 validation.trials=null)
run() {  # LABEL RECIPE OVERRIDES...
  local label=$1 recipe=$2; shift 2
  timeout $(( ${MIN%.*} * 60 + 150 )) python3 bench/dev_protocol.py "$recipe" "$@" "${COMMON[@]}" \
    --minutes "$MIN" --label "$label" --group gpu --no-eval --no-record > "$OUT/$label.log" 2>&1
  echo "$label rc=$?"
}
run moco_gpu_h200 configs/moco_speechocean762.yaml &
run moco_2s_gpu_h200 configs/moco_speechocean762.yaml data.crop_seconds=2.0 &
run simclr_am_sym_2s_gpu_h200 configs/simclr_am_sym_speechocean762.yaml data.crop_seconds=2.0 &
wait
for l in moco_gpu_h200 moco_2s_gpu_h200 simclr_am_sym_2s_gpu_h200; do
  tail -c 600 "$OUT/$l.log"; echo; mkdir -p "runs/dev/$l"; mv "$OUT/$l.log" "runs/dev/$l/train.log"
done
mkdir -p "$OUT/parts"  # at most 8 files come back, 16 MiB each: checkpoints travel in 15-MiB parts
tar c runs/dev/*_gpu_h200/config.yaml runs/dev/*_gpu_h200/*.log* runs/dev/*_gpu_h200/checkpoints/last.pt \
  bench/results/dev_protocol.jsonl | split -b 15M - "$OUT/parts/run.tar."
ls -la "$OUT/parts"

echo "== training throughput on the GPU"
timeout 100 python3 bench/train_throughput.py --levers fp32,cl_bf16 --data-paths main_batched \
  --steps 30 --warmup 5 --rounds 2 --threads 8 > "$OUT/throughput.log" 2>&1
echo "throughput rc=$?"; tail -c 1500 "$OUT/throughput.log"
echo "== C3-MoCo's k-means at VoxCeleb2 scale on the GPU"
timeout 120 python3 bench/clustering.py --iters 2 > "$OUT/clustering.log" 2>&1
echo "clustering rc=$?"; tail -c 800 "$OUT/clustering.log"
cp BENCHMARKS.md "$OUT/"
tar cf "$OUT/extra.tar" -C "$OUT" gpu.txt tests.txt throughput.log clustering.log BENCHMARKS.md \
  && rm "$OUT/gpu.txt" "$OUT/tests.txt" "$OUT/throughput.log" "$OUT/clustering.log" "$OUT/BENCHMARKS.md"
