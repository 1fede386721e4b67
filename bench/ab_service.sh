#!/usr/bin/env bash
# Side-by-side A/B of the service's throughput at concurrency 64 (one text per request, result cache off):
# the tree at BASE (a commit) against the working tree, ROUNDS rounds in ABBA order (base head head base ...), because
# this VM's speed drifts 10-30 % within minutes. Prints one line per run: tree, texts/s, statuses, p99 ms; then the
# pooled ratio and the median of the per-round ratios.
#   make bench-ab BASE=a0f9293 ROUNDS=4
set -euo pipefail
BASE=${BASE:?set BASE to a commit}; ROUNDS=${ROUNDS:-4}; PORT=${PORT:-18555}
ROOT=$(cd "$(dirname "$0")/.." && pwd); PY=$ROOT/.venv/bin/python
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
git -C "$ROOT" archive "$BASE" | tar -x -C "$WORK"
"$PY" - "$ROOT" > "$WORK/bodies.jsonl" <<'PYEOF'
import csv, json, random, sys
rows = [r["review"] for r in csv.DictReader(open(f"{sys.argv[1]}/data/waimai_10k.csv", encoding="utf-8"))]
random.Random(0).shuffle(rows)
print("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in rows[:3000]))
PYEOF
run() {  # $1 = tree, $2 = label
  (cd "$1" && PYTHONPATH="$1" ERNIE_CLS_PORT=$PORT ERNIE_CLS_CACHE_SIZE=0 ERNIE_CLS_LOG_JSON=false \
     ERNIE_CLS_ARTIFACT="$ROOT/exported/waimai-sentiment" exec "$PY" -m service) > "$WORK/server-$2.log" 2>&1 &
  local pid=$!
  "$PY" -c "import time, urllib.request
for _ in range(150):
    try:
        urllib.request.urlopen('http://127.0.0.1:$PORT/readyz', timeout=1); break
    except OSError:
        time.sleep(0.2)"
  (cd "$ROOT" && "$PY" -m bench.loadgen --port "$PORT" --bodies "$WORK/bodies.jsonl" --concurrency 64 \
     --duration "${SECONDS_PER_RUN:-12}" --warmup 3) | "$PY" -c "import json,sys; d=json.load(sys.stdin); \
print('$2', d['items_per_second'], d['statuses'], d['latency_ms']['p99'])" | tee -a "$WORK/results"
  kill -TERM "$pid"; wait "$pid" 2>/dev/null || true
}
for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 )); then run "$WORK" base; run "$ROOT" head; else run "$ROOT" head; run "$WORK" base; fi
done
"$PY" -c "import statistics; r=[l.split() for l in open('$WORK/results')]; \
b=[float(x[1]) for x in r if x[0]=='base']; h=[float(x[1]) for x in r if x[0]=='head']; \
print(f'pooled head/base: {sum(h) / sum(b):.3f}; median of round ratios: \
{statistics.median(x / y for x, y in zip(h, b)):.3f}')"
