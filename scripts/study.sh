#!/usr/bin/env bash
# The runs behind docs/study.md, in the order they are published: 3 seeds at 3M tokens, then one seed at the
# embedded defaults' full budget (7,400 steps x 16 x 256 = 30,310,400 tokens). Both continue where they stopped
# when this is run again (a killed training resumes from its last checkpoint; finished runs are not redone).
#   bash scripts/study.sh                 # hours on 2 CPU cores; see docs/study.md for the times measured
#   clozelm study data/corpus --out data/study-3m --seeds 3 --tokens 3000000 --report-only   # the report so far
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f data/corpus/MANIFEST.json ] || python scripts/build_corpus.py
clozelm study data/corpus --out data/study-3m --seeds 3 --tokens 3000000 --no-progress
# The full-budget runs finished on other machines come from their record in the repository (scripts/study_record.sh).
if [ -f docs/study/30m/record/study.json ]; then bash scripts/study_record.sh restore docs/study/30m/record data/study-30m; fi
clozelm study data/corpus --out data/study-30m --seeds 1 --tokens 30310400 --no-progress
