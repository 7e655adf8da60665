#!/usr/bin/env bash
# A study's record (study.json, tokenizer/, trained/, evals/: under half a megabyte, most of it the tokenizer)
# copied between its working directory and the repository, so that finished runs outlive the machine that trained
# them (the models and token caches, hundreds of MB, stay behind). A study continued from a record rebuilds its data
# split from the corpus, trains only the runs the record lacks (with the recorded tokenizer) and reports every
# run (see study/run.py).
#   bash scripts/study_record.sh save data/study-30m docs/study/30m/record      # after a run finishes
#   bash scripts/study_record.sh restore docs/study/30m/record data/study-30m   # before continuing elsewhere
# Both merge: a file the destination lacks is copied, and nothing is deleted. `save` replaces the destination's
# files by newer ones of the same name (a run trained again) but refuses another tokenizer (the runs of one
# study share one); `restore` keeps every file the destination has, and the study itself refuses a record whose
# settings differ from its own.
set -euo pipefail
usage() { echo "usage: $0 save|restore FROM TO" >&2; exit 2; }
[ $# -eq 3 ] || usage
verb=$1 from=$2 to=$3
[ -f "$from/study.json" ] || { echo "$from holds no study record (study.json)" >&2; exit 2; }
case $verb in
  save)
    if [ -f "$to/tokenizer/vocab.json" ] && [ -f "$from/tokenizer/vocab.json" ] &&
       ! cmp -s "$to/tokenizer/vocab.json" "$from/tokenizer/vocab.json"; then
      echo "$from has another tokenizer than the record in $to: its runs are not runs of the recorded study" >&2
      exit 2
    fi
    mkdir -p "$to"
    for part in tokenizer trained evals; do
      if [ -d "$from/$part" ]; then mkdir -p "$to/$part" && cp -r "$from/$part/." "$to/$part/"; fi
    done
    cp "$from/study.json" "$to/study.json" ;;
  restore)
    mkdir -p "$to"
    for part in tokenizer trained evals; do  # study.json last: a restore cut short is completed by the next
      if [ -d "$from/$part" ]; then mkdir -p "$to/$part" && cp -rn "$from/$part/." "$to/$part/"; fi
    done
    cp -n "$from/study.json" "$to/study.json" ;;
  *) usage ;;
esac
