#!/usr/bin/env bash
# Every timing benchmark of issues 2-8, one after another, on an otherwise idle machine (the
# script refuses to start while other adaptrain processes run; it signals no process).
# Usage, from the repository root:
#   bash benchmarks/timings.sh DATA.tar.gz TRAINED_RUN_DIR OUT_DIR
# TRAINED_RUN_DIR: a PGD-AT run on CIFAR-10 (PreActResNet-18 width 16) for SAAT's pass counts on
# a trained model and for the AutoAttack timing.
set -u
DATA=${1:?data}; RUN=${2:?trained run}; OUT=${3:?out dir}
mkdir -p "$OUT"
# timings are only meaningful on an idle machine: refuse to start (never pause or signal
# another process) while other adaptrain work runs
busy=$(pgrep -f "adaptrain( |\.cli )(train|eval)|benchmarks/[a-z_]+\.py" | grep -v "^$$\$" || true)
if [ -n "$busy" ]; then echo "other adaptrain processes are running ($busy): time nothing now" >&2; exit 1; fi
py() { echo "== $* $(date +%T)" >&2; python "$@"; }
py benchmarks/foundation.py throughput --data "$DATA" --width 16 --batches 4 --repeats 3 > "$OUT/foundation-throughput.json"
py benchmarks/foundation.py compaction --data "$DATA" --width 16 --repeats 5 > "$OUT/foundation-compaction.json"
py benchmarks/ecas.py --data "$DATA" --width 16 --batches 4 --repeats 5 > "$OUT/ecas-pgd-at.json"
py benchmarks/ecas.py --data "$DATA" --width 16 --batches 4 --repeats 5 --objective trades > "$OUT/ecas-trades.json"
py benchmarks/baselines.py awp-time --data "$DATA" --width 16 --batches 4 --repeats 3 > "$OUT/awp.json"
py benchmarks/saat.py --data "$DATA" > "$OUT/saat.json"
py benchmarks/saat.py --data "$DATA" --init "$RUN" > "$OUT/saat-trained.json"
py benchmarks/uiat.py --data "$DATA" --width 16 --batches 4 --repeats 3 > "$OUT/uiat.json"
py benchmarks/las.py --data "$DATA" --width 16 --policy-width 16 --batch-size 128 --batches 20 --k 20 --repeats 3 > "$OUT/las.json"
py benchmarks/corruptions.py --data "$DATA" --n 1000 --threads 2 > "$OUT/corruptions.json"
py benchmarks/evaluation.py aa-time "$RUN" --n 1000 --independent-n 200 > "$OUT/aa-time.json"
echo "== done $(date +%T)" >&2
