#!/usr/bin/env bash
# A lab pipeline end to end on the bundled digits benchmark with the tiny model (offline, CPU):
# prepare → several trains → comparison → memory → probe-variance, reading only JSON from stdout.
# Usage: examples/pipeline.sh [WORKDIR]   (needs `zocli` on PATH and `python3` for JSON parsing)
set -euo pipefail

work=${1:-$(mktemp -d)}
export ZOCLI_DATA="$work/data" HF_HUB_OFFLINE=1
common=(--preset digits-demo --max-steps 8 --epochs 1)
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

zocli prepare --benchmark digits --json | json 'd["data"]'

for plan in fo dual-zo vision-hop-odd dual-hop-even-mozo; do
  last=$(zocli train "${common[@]}" --preset "$plan" --out "$work/runs/$plan" --json | json 'd["last"]')
  echo "train $plan: Last $last"
done

zocli eval "$work/runs/fo" --json | json 'd["avg"]' > /dev/null
zocli eval "$work"/runs/* --csv
zocli eval "$work"/runs/* --json | json 'len(d["runs"])'
zocli memory --preset digits-demo --batch-size 16 --configs fo,dual,vision,language --device cpu --json \
  | json '" ".join(r["config"] + "=" + str(r["peak_bytes"]) for r in d["rows"])'
zocli probe-variance --run "$work/runs/fo" --batches 2 --draws 4 --json | json 'd["ratio_vision_language"]'
echo "pipeline ok: $work"
