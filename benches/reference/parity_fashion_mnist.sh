#!/usr/bin/env bash
# Parity with PyTorch at the same recipe: train DEFINITION for EPOCHS epochs with simclr and
# with PyTorch (benches/reference/simclr_fashion_mnist_torch.py reads the same definition),
# one after the other on the same machine, then score both encoders with the same probe
# (`simclr eval linear` and `simclr eval knn` on the full train/test splits) and print one table.
#
#   benches/reference/parity_fashion_mnist.sh [DEFINITION] [EPOCHS] [OUT]
#   (defaults: definitions/fashion-mnist.yaml, 3, runs/parity)
#
# Needs a release build (`cargo build --release`) and a Python with torch, torchvision, pyyaml,
# safetensors and numpy: PYTHON=.venv-torch/bin/python (default: python3).
set -euo pipefail
cd "$(dirname "$0")/../.."
DEF="${1:-definitions/fashion-mnist.yaml}"
EPOCHS="${2:-3}"
OUT="${3:-runs/parity}"
PYTHON="${PYTHON:-python3}"
SIMCLR="${SIMCLR:-target/release/simclr}"
THREADS="${THREADS:-$(nproc)}"
[ -x "$SIMCLR" ] || { echo "parity: $SIMCLR is missing: cargo build --release" >&2; exit 1; }
"$PYTHON" -c 'import torch, torchvision, yaml, safetensors' 2>/dev/null ||
  { echo "parity: $PYTHON lacks torch/torchvision/pyyaml/safetensors: PYTHON=.venv-torch/bin/python" >&2; exit 1; }
mkdir -p "$OUT"
rm -rf "$OUT/simclr" "$OUT/torch"

# One checkpoint at the end: the two runs do the same work in the timed loop.
start=$(date +%s%N)
RAYON_NUM_THREADS="$THREADS" "$SIMCLR" run "$DEF" --run-dir "$OUT/simclr" --quiet \
  --set "stages.images.params.epochs=$EPOCHS" --set "stages.checkpoints.params.every=0" \
  --metrics "$OUT/simclr-metrics.json" > "$OUT/simclr.log" 2>&1
ours_wall=$(( ($(date +%s%N) - start) / 1000000 ))
start=$(date +%s%N)
"$PYTHON" benches/reference/simclr_fashion_mnist_torch.py --definition "$DEF" --epochs "$EPOCHS" \
  --out "$OUT/torch" --threads "$THREADS" --workers "${WORKERS:-$THREADS}" > "$OUT/torch.log" 2>&1
torch_wall=$(( ($(date +%s%N) - start) / 1000000 ))

for side in simclr torch; do
  RAYON_NUM_THREADS="$THREADS" "$SIMCLR" eval linear "$OUT/$side" --out "$OUT/$side-linear.json" > /dev/null
  RAYON_NUM_THREADS="$THREADS" "$SIMCLR" eval knn "$OUT/$side" --out "$OUT/$side-knn.json" > /dev/null
done

OURS_WALL="$ours_wall" TORCH_WALL="$torch_wall" OUT="$OUT" EPOCHS="$EPOCHS" DEF="$DEF" "$PYTHON" - <<'EOF'
import json, os
out = os.environ["OUT"]
def load(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)
ours_steps = [json.loads(l) for l in open(os.path.join(out, "simclr", "steps.jsonl"))]
torch_steps = [json.loads(l) for l in open(os.path.join(out, "torch", "steps.jsonl"))]
rows = []
for side, steps, wall in (("simclr", ours_steps, float(os.environ["OURS_WALL"]) / 1000),
                          ("PyTorch", torch_steps, float(os.environ["TORCH_WALL"]) / 1000)):
    key = "simclr" if side == "simclr" else "torch"
    lin, knn = load(f"{key}-linear.json"), load(f"{key}-knn.json")
    train_s = steps[-1]["elapsed_seconds"]
    rows.append((side, lin["top1"], knn["top1"], len(steps), steps[-1]["loss"], train_s, wall))
print(f"{os.environ['DEF']}, {os.environ['EPOCHS']} epochs, same probe (simclr eval linear / knn, 60k train -> 10k test)")
print("| trainer | linear top-1 | kNN top-1 | steps | last loss | training s | process wall s |")
print("|---|---|---|---|---|---|---|")
for r in rows:
    print(f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | {r[3]} | {r[4]:.4f} | {r[5]:.0f} | {r[6]:.0f} |")
(o, t) = rows
print(f"simclr - PyTorch: linear {100 * (o[1] - t[1]):+.2f} points, kNN {100 * (o[2] - t[2]):+.2f} points; "
      f"training time {o[5] / t[5]:.2f}x PyTorch's ({o[6] / t[6]:.2f}x in process wall time)")
EOF
