#!/usr/bin/env bash
# The README's ablation: train the three arms of recipes/gritsmol.yaml (same data, same steps) and
# evaluate them beside the untouched base and all-MiniLM-L6-v2. Every step is skipped when its output
# exists, so an interrupted run picks up where it stopped (training resumes from its checkpoint).
#   recipes/gritsmol_ablation.sh          # ~30 min a trained arm, ~2 h of evaluation on 2 CPU cores
{  # bash reads the whole block before running it, so editing this file mid-run cannot change the run
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] && source .venv/bin/activate
out=results/ablation
threads=${THREADS:-1}

[ -f data/gritsmol-mix/mix.json ] || gritkit data build data/gritsmol-mix --max-per-source 800
for mode in unified embedding generative; do
  [ -f runs/gritsmol-$mode/adapter_config.json ] ||
    gritkit train recipes/gritsmol.yaml --mode $mode --output-dir runs/gritsmol-$mode --resume
done

evaluate() {  # name model suite tasks limit
  [ -f $out/$1-$3.json ] || gritkit eval --model "$2" --name "$1" --tasks "$4" --limit "$5" --threads $threads --output $out/$1-$3.json
}
embedding_suites() {
  evaluate "$1" "$2" sentence stsb,mrpc,banking77,twentynewsgroups 200
  evaluate "$1" "$2" reranking trecqa 30
  evaluate "$1" "$2" retrieval msmarco 5
}
generative_suites() {
  evaluate "$1" "$2" generative-100 mmlu,tydiqa,perplexity 100
  evaluate "$1" "$2" generative-20 gsm8k,bbh 20
}
embedding_suites minilm st:minilm
embedding_suites base smollm2-base;            generative_suites base smollm2-base
for mode in embedding generative; do
  embedding_suites $mode-only runs/gritsmol-$mode; generative_suites $mode-only runs/gritsmol-$mode
done
embedding_suites unified runs/gritsmol-unified;  generative_suites unified runs/gritsmol-unified

gritkit report $out/{minilm,base,embedding-only,generative-only,unified}-*.json --output-dir $out/report
exit
}
