#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (what CI's CPU machines cannot show). Parts, in $PARTS (default all):
#   env        env.txt: the GPU, torch, onnxruntime's providers, whether TensorRT is installed;
#   transfer   transfer-*.log, transfer.txt: `edgeppt transfer` on the built-in example with the default device
#              (auto: the GPU), without and with unlabelled images (report.json's accuracy and timings);
#   ranking    ranking*.json: benchmarks/ranking.py (proxy vs reference ranking) in side-by-side shards;
#   demo       demo.log, demo-gpu-export.log: `edgeppt demo` end to end, then the trained model exported for a
#              GPU device (onnx, int8, fp16; TensorRT engines too where TensorRT is installed) and benchmarked.
# usage: [PARTS='env demo'] [TRANSFER_ARGS='--set k=v ...'] benchmarks/gpu.sh OUT [shards] [ranking.py arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
out=$1; shards=${2:-12}; shift $(( $# >= 2 ? 2 : 1 ))
parts=" ${PARTS:-env transfer ranking demo} "
limit=${GPU_LIMIT_S:-420}  # each part stops here, so what finished comes back
mkdir -p "$out"; out=$(cd "$out" && pwd); root=$(pwd)
export PYTHONUNBUFFERED=1 EDGEPPT_EXAMPLE_BUNDLE="$root/bundles/animals-src"
target=animals:elephant,giraffe,horse,sheep,zebra
has() { [[ $parts == *" $1 "* ]]; }
# The CLI runs from outside the checkout: its edgeppt/ folder would shadow the installed package's edgeppt.cli.
edgeppt() { (cd "$out" && timeout "$limit" python3 -m edgeppt.cli "$@"); }

if has env; then
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
fi

transfer() {  # name, extra args
  local name=$1; shift
  edgeppt transfer --source "$root/bundles/animals-src" --target "$target" --labels-per-class 4 \
    --out "$out/run-$name" ${TRANSFER_ARGS:-} "$@" > "$out/transfer-$name.log" 2>&1
  python3 - "$out/run-$name/report.json" "$name" <<'EOF' >> "$out/transfer.txt" 2>&1
import json, sys
r = json.load(open(sys.argv[1]))
keep = {k: r.get(k) for k in ("method", "test_accuracy", "timings_s", "images_per_s", "device", "auto", "unlabeled")}
print(sys.argv[2], json.dumps(keep, default=str)[:3000])
EOF
}
if has transfer; then  # two runs beside the ranking shards (each process two CPU threads, the shards one)
  OMP_NUM_THREADS=2 transfer default &
  OMP_NUM_THREADS=2 transfer unlabelled --unlabeled rest &
fi

if has ranking; then
  pids=()
  for i in $(seq 0 $((shards - 1))); do
    timeout "$limit" python3 benchmarks/ranking.py --threads 1 --shard "$i/$shards" --json "$out/ranking-part$i.json" \
      "$@" > "$out/ranking-part$i.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[@]}"
  timeout 120 python3 benchmarks/ranking.py --threads 2 --reuse "$out"/ranking-part*.json --json "$out/ranking.json" \
    "$@" > "$out/ranking.log" 2>&1
  tail -15 "$out/ranking.log"
fi
wait
has transfer && cat "$out/transfer.txt"

if has demo; then
  start=$SECONDS
  edgeppt demo --out "$out/demo" --quiet > "$out/demo.log" 2>&1
  echo "demo: exit $? in $((SECONDS - start)) s"; tail -25 "$out/demo.log"
  formats=onnx,int8,fp16
  python3 -c "import tensorrt" 2>/dev/null && formats=$formats,tensorrt
  { edgeppt export "$out/demo/transfer" --device jetson --formats "$formats" --out "$out/dist-gpu" \
      && edgeppt bench "$out/dist-gpu" --json; } > "$out/demo-gpu-export.log" 2>&1
  echo "GPU-device export ($formats): exit $?"; tail -40 "$out/demo-gpu-export.log"
fi
