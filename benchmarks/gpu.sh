#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (what CI's CPU machines cannot show):
#   env.txt           the GPU, torch, onnxruntime's providers, whether TensorRT is installed;
#   transfer-*.log    `edgeppt transfer` on the GPU with the default device (auto), the built-in example,
#                     without and with unlabelled images (report.json: accuracy and timings);
#   ranking*.json     benchmarks/ranking.py (proxy vs reference ranking) in side-by-side shards;
#   tensorrt.log      fp16 and int8 engines of the example's exported model, where TensorRT is installed.
# usage: [TRANSFER_ARGS='--set k=v ...'] benchmarks/gpu.sh OUT [shards] [extra ranking.py arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
out=$1; shards=${2:-12}; shift $(( $# >= 2 ? 2 : 1 ))
limit=${GPU_LIMIT_S:-420}  # each part stops here, so what finished comes back
mkdir -p "$out"; out=$(cd "$out" && pwd); root=$(pwd)
export PYTHONUNBUFFERED=1
target=animals:elephant,giraffe,horse,sheep,zebra

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  python3 -c "import torch, onnxruntime as o; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-'); print('onnxruntime', o.__version__,
o.get_available_providers())"
  python3 -c "import tensorrt; print('tensorrt', tensorrt.__version__)" 2>&1 | tail -1
  echo "trtexec: $(command -v trtexec || echo none); libnvinfer: $(ldconfig -p | grep -c libnvinfer)"
  nproc
} > "$out/env.txt" 2>&1
cat "$out/env.txt"

# Transfer on the GPU: two runs beside the ranking shards (each process two CPU threads, the shards one).
transfer() {  # name, extra args
  local name=$1; shift
  # from outside the checkout: its edgeppt/ folder would shadow the installed package's edgeppt.cli
  (cd "$out" && timeout "$limit" python3 -m edgeppt.cli transfer --source "$root/bundles/animals-src" --target "$target" \
    --labels-per-class 4 --out "$out/run-$name" ${TRANSFER_ARGS:-} "$@" > "$out/transfer-$name.log" 2>&1)
  python3 - "$out/run-$name/report.json" "$name" <<'EOF' >> "$out/transfer.txt" 2>&1
import json, sys
r = json.load(open(sys.argv[1]))
keep = {k: r.get(k) for k in ("method", "test_accuracy", "timings_s", "images_per_s", "device", "auto", "unlabeled")}
print(sys.argv[2], json.dumps(keep, default=str)[:3000])
EOF
}
OMP_NUM_THREADS=2 transfer default &
OMP_NUM_THREADS=2 transfer unlabelled --unlabeled rest &

pids=()
[ "$shards" -gt 0 ] && for i in $(seq 0 $((shards - 1))); do
  timeout "$limit" python3 benchmarks/ranking.py --threads 1 --shard "$i/$shards" --json "$out/ranking-part$i.json" "$@" \
    > "$out/ranking-part$i.log" 2>&1 &
  pids+=($!)
done
[ "$shards" -gt 0 ] && wait "${pids[@]}" && timeout 120 python3 benchmarks/ranking.py --threads 2 --reuse "$out"/ranking-part*.json --json "$out/ranking.json" "$@" \
  > "$out/ranking.log" 2>&1
tail -15 "$out/ranking.log"
wait
cat "$out/transfer.txt"

# TensorRT: only where the bindings and libraries are installed on this machine.
if python3 -c "import tensorrt" 2>/dev/null; then
  python3 -m edgeppt.cli export "$out/run-default" --device jetson --formats onnx,int8,fp16,tensorrt \
    --out "$out/dist" > "$out/tensorrt.log" 2>&1
  python3 -m edgeppt.cli bench "$out/dist" --json >> "$out/tensorrt.log" 2>&1
  tail -20 "$out/tensorrt.log"
fi
