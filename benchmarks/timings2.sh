#!/usr/bin/env bash
# Second timing window: ECAS's overhead with more batches and repeats, and the quickstart's wall
# time, on the idle machine (the script refuses to start while other adaptrain processes run).
# Usage: bash benchmarks/timings2.sh DATA.tar.gz OUT_DIR
set -u
DATA=${1:?data}; OUT=${2:?out dir}
mkdir -p "$OUT"
# timings are only meaningful on an idle machine: refuse to start (never pause or signal
# another process) while other adaptrain work runs
busy=$(pgrep -f "adaptrain( |\.cli )(train|eval)|benchmarks/[a-z_]+\.py" | grep -v "^$$\$" || true)
if [ -n "$busy" ]; then echo "other adaptrain processes are running ($busy): time nothing now" >&2; exit 1; fi
echo "== ecas $(date +%T)" >&2
python benchmarks/ecas.py --data "$DATA" --width 16 --batches 8 --repeats 9 > "$OUT/ecas-pgd-at-long.json"
echo "== quickstart $(date +%T)" >&2
rm -rf "$OUT/qs" "$OUT/qs-clean"
/usr/bin/time -f "%e" -o "$OUT/quickstart.time" adaptrain train quickstart --out "$OUT/qs" --quiet > "$OUT/quickstart.log"
/usr/bin/time -f "%e" -o "$OUT/quickstart-clean.time" adaptrain train quickstart-clean --out "$OUT/qs-clean" --quiet > "$OUT/quickstart-clean.log"
adaptrain eval "$OUT/qs" --attacks clean,pgd-20,aa --n 360 --quiet --out "$OUT/qs-eval.json" > /dev/null
adaptrain eval "$OUT/qs-clean" --attacks clean,pgd-20,aa --n 360 --quiet --out "$OUT/qs-clean-eval.json" > /dev/null
echo "== done $(date +%T)" >&2
