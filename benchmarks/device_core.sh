#!/usr/bin/env bash
# The core grid on a lent GPU machine (the `device` tool): a smoke grid first (every defense on CUDA, 18 tiny runs),
# then benchmarks/grids/core.yaml until TOTAL_SECONDS have passed, then the report. What comes back lies under $OUT:
# gpu.txt, smoke.log, core.log and core.tgz (table, run store, every run's result.json and log, report.html).
# Fashion-MNIST travels in .gpu/cache/fashion-mnist (Debian's four IDX .gz files, recompressed, so not the
# official md5s: they go where the Debian package puts them; .gpu/ is git-ignored).
#   run: bash benchmarks/device_core.sh   (carry: [.gpu])
set -u
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 CLEANTRAIN_NO_APT=1 CLEANTRAIN_CACHE=$PWD/.gpu/cache
OUT=${OUT:-/tmp/out}; JOBS=${JOBS:-10}; TOTAL_SECONDS=${TOTAL_SECONDS:-540}  # smoke + core grid, then report
mkdir -p "$OUT"
D=/usr/share/datasets/fashion-mnist
[ -f $D/t10k-labels-idx1-ubyte.gz ] || { mkdir -p $D && cp .gpu/cache/fashion-mnist/*.gz $D/; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; python3 -V
  python3 -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name(0))"; } \
  > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
t0=$(date +%s)
python3 -m cleantrain bench --grid "${SMOKE_GRID:-benchmarks/grids/gpu-smoke.yaml}" --out /tmp/smoke --jobs "$JOBS" --quiet \
  > "$OUT/smoke.log" 2>&1
rc=$?
python3 -m cleantrain report /tmp/smoke >> "$OUT/smoke.log" 2>&1
cat /tmp/smoke/table.md >> "$OUT/smoke.log"
echo "smoke rc $rc in $(( $(date +%s) - t0 )) s"; tail -n 30 "$OUT/smoke.log"
if [ "$rc" -ne 0 ]; then
  tar czf "$OUT/smoke.tgz" -C /tmp smoke/logs smoke/runs.db 2>/dev/null
  exit 1
fi
t1=$(date +%s)
timeout -s TERM $(( TOTAL_SECONDS - (t1 - t0) )) python3 -m cleantrain bench --grid benchmarks/grids/core.yaml --out /tmp/core \
  --jobs "$JOBS" --quiet > "$OUT/core.log" 2>&1
echo "core rc $? in $(( $(date +%s) - t1 )) s"
sleep 5
python3 -m cleantrain report /tmp/core >> "$OUT/core.log" 2>&1
tail -n 5 "$OUT/core.log"
cd /tmp && tar czf "$OUT/core.tgz" core/table.md core/table.csv core/runs.db core/grid.json core/logs \
  core/report.html $(ls core/runs/*/result.json core/runs/*/run.json 2>/dev/null)
ls -la "$OUT"
