#!/usr/bin/env bash
# The runs behind docs/study.md, in the order they are published: 3 seeds at 3M tokens, then one seed at the
# embedded defaults' full budget (7,400 steps x 16 x 256 = 30,310,400 tokens). Both continue where they stopped
# when this is run again on the same machine (a killed training resumes from its last checkpoint; finished runs
# are not redone); on another machine the 30M study continues from its record (finished runs only).
#   bash scripts/study.sh [3m|30m]        # both, or one of them; hours on 2 CPU cores (docs/study.md)
#   clozelm study data/corpus --out data/study-3m --seeds 3 --tokens 3000000 --report-only   # the report so far
set -euo pipefail
cd "$(dirname "$0")/.."
which=${1:-all}
case $which in all|3m|30m) ;; *) echo "usage: $0 [3m|30m]" >&2; exit 2 ;; esac
[ -f data/corpus/MANIFEST.json ] || python scripts/build_corpus.py
if [ "$which" != 30m ]; then
  clozelm study data/corpus --out data/study-3m --seeds 3 --tokens 3000000 --no-progress
fi
[ "$which" != 3m ] || exit 0
# The recorded full-budget runs trained in bf16 with fp32 masters; a CPU without bf16 units (AVX2 alone) would
# train the rest in fp32 (another recipe) or emulate bf16, tens of times slower: run them on a machine with the units.
if ! grep -qwE 'amx_bf16|avx512_bf16|bf16' /proc/cpuinfo; then
  echo "study.sh: this CPU has no bf16 units (no AMX, AVX-512 BF16 or Arm BF16 in /proc/cpuinfo); the 30M runs train in bf16: run them on a machine that has them" >&2
  exit 2
fi
# The full-budget runs finished on other machines come from their record in the repository, and the record is
# saved back after each run and when this stops (scripts/study_record.sh): commit docs/study/30m/record then.
# One objective at a time, so that a run finished is saved before the next starts.
RECORD=docs/study/30m/record
save() { if [ -f data/study-30m/study.json ]; then bash scripts/study_record.sh save data/study-30m "$RECORD"; fi; }
trap 'status=$?; save || true; exit $status' EXIT
if [ -f "$RECORD/study.json" ]; then bash scripts/study_record.sh restore "$RECORD" data/study-30m; fi
done_so_far=
for objective in clm mlm fim hybrid mdlm; do
  done_so_far=${done_so_far:+$done_so_far,}$objective
  clozelm study data/corpus --out data/study-30m --seeds 1 --tokens 30310400 --objectives "$done_so_far" --no-progress
  save
done
