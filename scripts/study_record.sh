#!/usr/bin/env bash
# A study's record (study.json, tokenizer/, trained/, evals/: about a megabyte, most of it the tokenizer) copied
# between its working directory and the repository, so that finished runs outlive the machine that trained them
# (the models and token caches, hundreds of MB, stay behind). A study continued from a record rebuilds its data split from the corpus, trains
# only the runs the record lacks (with the recorded tokenizer) and reports every run (see study/run.py).
#   bash scripts/study_record.sh save data/study-30m docs/study/30m/record      # after runs finish
#   bash scripts/study_record.sh restore docs/study/30m/record data/study-30m   # before continuing elsewhere
set -euo pipefail
usage() { echo "usage: $0 save|restore FROM TO" >&2; exit 2; }
[ $# -eq 3 ] || usage
verb=$1 from=$2 to=$3
case $verb in
  save)
    [ -f "$from/study.json" ] || { echo "$from holds no study (study.json)" >&2; exit 2; }
    mkdir -p "$to"
    rm -rf "$to/tokenizer" "$to/trained" "$to/evals"
    cp "$from/study.json" "$to/"
    for part in tokenizer trained evals; do
      if [ -d "$from/$part" ]; then cp -r "$from/$part" "$to/$part"; fi
    done ;;
  restore)
    [ -f "$from/study.json" ] || { echo "$from holds no study record (study.json)" >&2; exit 2; }
    if [ -f "$to/study.json" ]; then echo "$to holds a study already; nothing restored" >&2; exit 0; fi
    mkdir -p "$to"
    cp "$from/study.json" "$to/"
    for part in tokenizer trained evals; do
      if [ -d "$from/$part" ]; then cp -r "$from/$part" "$to/$part"; fi
    done ;;
  *) usage ;;
esac
