#!/usr/bin/env bash
# Every timing benchmark of issues 2-8, one after another, on an otherwise idle machine (the
# script pauses any running `adaptrain` training / evaluation processes with SIGSTOP and resumes
# them at the end). Usage, from the repository root:
#   bash benchmarks/timings.sh DATA.tar.gz TRAINED_RUN_DIR OUT_DIR
# TRAINED_RUN_DIR: a PGD-AT run on CIFAR-10 (PreActResNet-18 width 16) for SAAT's pass counts on
# a trained model and for the AutoAttack timing.
set -u
DATA=${1:?data}; RUN=${2:?trained run}; OUT=${3:?out dir}
mkdir -p "$OUT"
paused=$(pgrep -f "adaptrain.cli (train|eval)" || true)
[ -n "$paused" ] && kill -STOP $paused
trap '[ -n "$paused" ] && kill -CONT $paused' EXIT
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
