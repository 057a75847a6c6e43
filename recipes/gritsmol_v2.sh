#!/usr/bin/env bash
# gritsmol v2: data, both training stages, the no-RAG-stream ablation arm, every evaluation and the report.
# Each step is skipped when its output exists, so an interrupted run picks up where it stopped (training
# resumes from its newest checkpoint). On 2 CPU cores: ~1 h per stage-2 arm, ~1-2 h of evaluation per model.
#   recipes/gritsmol_v2.sh              # everything
#   STEPS="train eval" recipes/gritsmol_v2.sh
#   STEPS=stages recipes/gritsmol_v2.sh  # the shipped default's CPU stages 3-7 on top of the GPU stage 2 (STAGE8=1: also 8)
#   (stage 10, the shipped default's last stage, trains on a lent GPU: recipes/device/README.md)
#   STEPS=stage9 recipes/gritsmol_v2.sh  # stage 9 (measured, not shipped) on top of the adapter shipped when it ran,
#                                        # stage 7; `model: default` is stage 10 now (see its recipe's header)
#   STEPS=stage11 recipes/gritsmol_v2.sh # stage 11 on top of the shipped stage 10 (an embedding-heavy stage; README)
#   STEPS=stage12 recipes/gritsmol_v2.sh # stage 12: stage 10 extrapolated past itself, away from stage 7 (no training)
#   STEPS="stage12 extrap2" recipes/gritsmol_v2.sh  # and two such steps (measured, not shipped)
#   STEPS=stage14 recipes/gritsmol_v2.sh # stage 14: stage 13 (GPU) extrapolated past itself, away from stage 12
#   STEPS=stage15c recipes/gritsmol_v2.sh # stage 15c: SQuAD-style RAG targets on the CPU, on top of stage 12
#   STEPS="stage15c stage16c" recipes/gritsmol_v2.sh # stage 16c: stage 15c plus locate-and-copy questions
#   STEPS="stage15c stage17c" recipes/gritsmol_v2.sh # stage 17c: stage 15c plus hidden-state distillation
#   OUT=results/x MODELS="x=runs/x" SUITES="sts-full" RAG_CORPORA="tydiqa squad" STEPS="eval rag" recipes/gritsmol_v2.sh
{  # bash reads the whole block before running it, so editing this file mid-run cannot change the run
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .venv ] && source .venv/bin/activate
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_WAIT_POLICY=PASSIVE
out=${OUT:-results/gritsmol-v2}
threads=${THREADS:-1}
steps=${STEPS:-"train eval rag report"}
suites=${SUITES:-"sentence reranking retrieval sts-full msmarco-full generative-100"}
rag_corpora=${RAG_CORPORA:-tydiqa}
rag_modes=${RAG_MODES:-"rag_query_first rag_doc_first query doc doc_causal"}
mkdir -p $out

if [[ $steps == *train* ]]; then
  [ -f data/gritsmol-mix/mix.json ] || gritkit data build data/gritsmol-mix --max-per-source 800
  [ -f data/gritsmol-v2-mix/mix.json ] || gritkit data build data/gritsmol-v2-mix --max-per-source 1500
  [ -f runs/gritsmol-unified/adapter_config.json ] || gritkit train recipes/gritsmol.yaml --resume      # stage 1 = v1
  [ -f runs/gritsmol-v2/adapter_config.json ] || gritkit train recipes/gritsmol_v2.yaml --resume       # stage 2 = v2
  if [ -n "${ABLATION:-}" ]; then  # the same stage 2 without the RAG stream
    [ -f runs/gritsmol-v2-norag/adapter_config.json ] ||
      gritkit train recipes/gritsmol_v2.yaml --rag-data "[]" --output-dir runs/gritsmol-v2-norag --resume
  fi
fi

build_stage_mixes() {  # the embedding and chat data of stages 3-9
  [ -f data/gritsmol-v3-sts/mix.json ] || gritkit data build data/gritsmol-v3-sts --source stsb_scored --source nli
  [ -f data/gritsmol-v3-keep/mix.json ] || gritkit data build data/gritsmol-v3-keep --max-per-source 320 --source medquad \
    --source tydiqa --source wikiqa --source flickr8k --source banking77 --source twentynewsgroups --source t0 \
    --source flan_cot --source gsm8k
  [ -f data/gritsmol-v3-chat/mix.json ] || gritkit data build data/gritsmol-v3-chat --source selfinstruct --source gsm8k --max-per-source 175
}

# The shipped default's CPU stages 3-7 (STAGE8=1: and the unshipped stage 8), on top of stage 2
# (runs/gritsmol-v2-gpu-norag, from the GPU run of recipes/device/README.md), then the adapter:
# STEPS=stages recipes/gritsmol_v2.sh   (~3 h on 2 cores)
if [[ $steps == *stages* ]]; then
  [ -f runs/gritsmol-v2-gpu-norag/adapter_config.json ] || { echo "stage 2 first: recipes/device/README.md" >&2; exit 1; }
  [ -f data/gritsmol-v2-gpu-mix/mix.json ] || gritkit data build data/gritsmol-v2-gpu-mix --max-per-source 4000
  build_stage_mixes
  [ -f runs/gritsmol-v2-cosent/adapter_config.json ] || gritkit train recipes/gritsmol_v2_cosent.yaml --resume            # 3
  [ -f runs/gritsmol-v2-cosent-chat/adapter_config.json ] || gritkit train recipes/gritsmol_v2_cosent_chat.yaml --resume  # 4
  self=data/gritsmol-v3-self-clean/rag/tydiqa.jsonl
  [ -f $self ] && [ ! -f $self.progress ] || gritkit data self-targets data/gritsmol-v2-gpu-mix/rag/tydiqa.jsonl --output $self \
    --model runs/gritsmol-v2-cosent-chat --batch-size 16 --max-new-tokens 48 --limit 1400
  [ -f data/gritsmol-v3-selfchat/generative/rag_chat.jsonl ] ||
    gritkit data rag-chat $self --output data/gritsmol-v3-selfchat/generative/rag_chat.jsonl
  [ -f runs/gritsmol-v2-rag-anchored/adapter_config.json ] || gritkit train recipes/gritsmol_v2_rag_anchored.yaml --resume  # 5
  [ -f runs/gritsmol-v2-rag-anchored-more/adapter_config.json ] ||
    gritkit train recipes/gritsmol_v2_rag_anchored_more.yaml --resume                                                    # 6
  fresh=data/gritsmol-v4-self/rag/tydiqa.jsonl  # stage 6's own answers to the TyDi QA train rows stages 5-6 never used
  mkdir -p data/gritsmol-v4-src/rag
  [ -f data/gritsmol-v4-src/rag/tydiqa.jsonl ] || tail -n +1401 data/gritsmol-v2-gpu-mix/rag/tydiqa.jsonl > data/gritsmol-v4-src/rag/tydiqa.jsonl
  [ -f $fresh ] && [ ! -f $fresh.progress ] || gritkit data self-targets data/gritsmol-v4-src/rag/tydiqa.jsonl --output $fresh \
    --model runs/gritsmol-v2-rag-anchored-more --batch-size 16 --max-new-tokens 48
  [ -f data/gritsmol-v4-selfchat/generative/rag_chat.jsonl ] ||
    gritkit data rag-chat $fresh --output data/gritsmol-v4-selfchat/generative/rag_chat.jsonl
  [ -f runs/gritsmol-v2-rag-fresh/adapter_config.json ] || gritkit train recipes/gritsmol_v2_rag_fresh.yaml --resume          # 7
  echo "ship: gritkit export-adapter runs/gritsmol-v2-rag-fresh gritkit/adapters/gritsmol --results <its eval records>"
  if [ -n "${STAGE8:-}" ]; then  # stage 8 on AdversarialQA targets: measured, not shipped (README)
    aqa=data/gritsmol-v5-self/rag/adversarialqa.jsonl  # stage 7's own answers to AdversarialQA questions, right or wrong
    [ -f data/gritsmol-v5-src/mix.json ] || gritkit data build data/gritsmol-v5-src --source rag-adversarialqa
    [ -f $aqa ] && [ ! -f $aqa.progress ] || gritkit data self-targets data/gritsmol-v5-src/rag/adversarialqa.jsonl --output $aqa \
      --model runs/gritsmol-v2-rag-fresh --keep all --batch-size 16 --max-new-tokens 48
    [ -f data/gritsmol-v5-selfchat/generative/rag_chat.jsonl ] ||
      gritkit data rag-chat $aqa --correct-only --output data/gritsmol-v5-selfchat/generative/rag_chat.jsonl
    [ -f runs/gritsmol-v2-rag-aqa/adapter_config.json ] || gritkit train recipes/gritsmol_v2_rag_aqa.yaml --resume              # 8
  fi
fi

# Stage 9 (recipes/gritsmol_v2_rag_short.yaml): stage 8's streams on doc and query caching, self-targets of at most
# 16 words, on top of the shipped adapter, so it needs none of the earlier runs: STEPS=stage9 recipes/gritsmol_v2.sh (~1 h)
if [[ $steps == *stage9* ]]; then
  build_stage_mixes
  [ -f data/gritsmol-v5-src/mix.json ] || gritkit data build data/gritsmol-v5-src --source rag-adversarialqa
  [ -f data/gritsmol-v6-tydi/mix.json ] || gritkit data build data/gritsmol-v6-tydi --source rag-tydiqa --max-per-source 4000
  unused=data/gritsmol-v6-tydi/tydiqa-unused.jsonl  # the TyDi QA train rows stages 5-6 never used
  [ -f $unused ] || tail -n +1401 data/gritsmol-v6-tydi/rag/tydiqa.jsonl > $unused
  for source in adversarialqa tydiqa; do
    target=data/gritsmol-v6-self/rag/$source.jsonl
    if [ $source = tydiqa ]; then input=$unused; options=(--limit 480); else input=data/gritsmol-v5-src/rag/$source.jsonl; options=(--keep all); fi
    [ -f $target ] && [ ! -f $target.progress ] || gritkit data self-targets $input --output $target "${options[@]}" \
      --max-answer-words 16 --batch-size 16 --max-new-tokens 48
  done
  [ -f data/gritsmol-v6-selfchat/generative/rag_chat.jsonl ] || gritkit data rag-chat data/gritsmol-v6-self/rag/*.jsonl \
    --correct-only --output data/gritsmol-v6-selfchat/generative/rag_chat.jsonl
  [ -f runs/gritsmol-v2-rag-short/adapter_config.json ] || gritkit train recipes/gritsmol_v2_rag_short.yaml --resume           # 9
fi

# Stage 11 (recipes/gritsmol_v2_sts_anchor.yaml): embedding-heavy, anchored by the RAG stream, on top of the
# shipped stage 10 and its stage-9 data: STEPS=stage11 recipes/gritsmol_v2.sh (~40 min)
if [[ $steps == *stage11* ]]; then
  build_stage_mixes
  [ -f data/gritsmol-v6-self/rag/tydiqa.jsonl ] || { echo "stage 9's self-targets first: STEPS=stage9" >&2; exit 1; }
  [ -f runs/gritsmol-v2-sts-anchor/adapter_config.json ] || gritkit train recipes/gritsmol_v2_sts_anchor.yaml --resume       # 11
fi

# Stage 12: no training. Stage 10 (the GPU stage) moved every open target of issue 11; with no GPU, extrapolate
# the adapter one more such step: ΔW10 + 1.0·(ΔW10 − ΔW7) (gritkit extrapolate-adapter, docs/training.md).
# Both stages come from the commits that shipped them: STEPS=stage12 recipes/gritsmol_v2.sh (~1 min)
stage_from_git() {  # stage_from_git N COMMIT: the adapter shipped as stage N at COMMIT, into runs/gritsmol-v2-stageN
  local folder=runs/gritsmol-v2-stage$1
  [ -f $folder/adapter_config.json ] ||
    { mkdir -p $folder && git archive $2 gritkit/adapters/gritsmol | tar -x --strip-components=3 -C $folder; }
}
if [[ $steps == *stage12* ]]; then
  stage_from_git 7 74c579c
  stage_from_git 10 de73661
  [ -f runs/gritsmol-v2-extrap1/adapter_config.json ] || gritkit extrapolate-adapter runs/gritsmol-v2-stage10 \
    runs/gritsmol-v2-extrap1 --from runs/gritsmol-v2-stage7 --weight 1.0                                                    # 12
fi
# Two steps instead of one (ΔW10 + 2.0·(ΔW10 − ΔW7); measured, not shipped): STEPS="stage12 extrap2"
if [[ $steps == *extrap2* ]]; then
  [ -f runs/gritsmol-v2-extrap2/adapter_config.json ] || gritkit extrapolate-adapter runs/gritsmol-v2-stage10 \
    runs/gritsmol-v2-extrap2 --from runs/gritsmol-v2-stage7 --weight 2.0
fi

# Stage 14 (measured; docs/gritsmol.md): no training. Stage 13 (178 GPU steps on top of stage 12) moved doc caching
# up and query caching down; extrapolate it one more such step: ΔW13 + 1.0·(ΔW13 − ΔW12). Stage 12 comes from the
# commit that shipped it; stage 13 from the GPU run of recipes/device/README.md (its gold-distill arm).
# STEPS=stage14 recipes/gritsmol_v2.sh (~1 min)
if [[ $steps == *stage14* ]]; then
  stage13=runs/gritsmol-v2-rag-gpu13-gold-distill
  [ -f $stage13/adapter_config.json ] || { echo "stage 13 first: recipes/device/README.md" >&2; exit 1; }
  stage_from_git 12 c59968f
  [ -f runs/gritsmol-v2-extrap13/adapter_config.json ] || gritkit extrapolate-adapter $stage13 \
    runs/gritsmol-v2-extrap13 --from runs/gritsmol-v2-stage12 --weight 1.0                                                  # 14
fi

# Stage 15c (recipes/gritsmol_v2_rag_quoref_cpu.yaml; measured, docs/gritsmol.md): stage 15's SQuAD-style
# sources (AdversarialQA, Quoref) at stage 8's CPU scale on top of the shipped stage 12, which writes every target.
# STEPS=stage15c recipes/gritsmol_v2.sh (~20 min of targets where none exist, ~40 min of training)
if [[ $steps == *stage15c* ]]; then
  build_stage_mixes
  self=data/gritsmol-v6-self/rag v15=data/gritsmol-v15c-self/rag
  [ -f data/gritsmol-v5-src/rag/quoref.jsonl ] ||
    gritkit data build data/gritsmol-v5-src --source rag-adversarialqa --source rag-quoref
  for source in adversarialqa quoref; do
    [ -f $self/$source.jsonl ] && [ ! -f $self/$source.jsonl.progress ] || gritkit data self-targets \
      data/gritsmol-v5-src/rag/$source.jsonl --output $self/$source.jsonl --keep all --max-answer-words 16 --batch-size 16 --max-new-tokens 48
  done
  [ -f data/gritsmol-v6-tydi/mix.json ] || gritkit data build data/gritsmol-v6-tydi --source rag-tydiqa --max-per-source 4000
  mkdir -p $v15 data/gritsmol-v15c-selfchat/generative
  gritkit data self-targets data/gritsmol-v6-tydi/rag/tydiqa.jsonl --output $v15/tydiqa.jsonl \
    --max-answer-words 16 --batch-size 16 --max-new-tokens 48 --limit 400
  cp $self/adversarialqa.jsonl $self/quoref.jsonl $v15/
  gritkit data rag-chat $v15/*.jsonl --correct-only --output data/gritsmol-v15c-selfchat/generative/rag_chat.jsonl
  [ -f runs/gritsmol-v2-rag-quoref-cpu/adapter_config.json ] || gritkit train recipes/gritsmol_v2_rag_quoref_cpu.yaml --resume  # 15c
fi

# STEPS="stage15c stage16c" recipes/gritsmol_v2.sh (stage 15c's data, then ~40 min of training)
if [[ $steps == *stage16c* ]]; then
  [ -f data/gritsmol-v16c-src/mix.json ] || gritkit data build data/gritsmol-v16c-src --source rag-reading --max-per-source 880
  [ -f runs/gritsmol-v2-rag-reading-cpu/adapter_config.json ] || gritkit train recipes/gritsmol_v2_rag_reading_cpu.yaml --resume  # 16c
fi

# STEPS="stage15c stage17c" recipes/gritsmol_v2.sh (stage 15c's data, then ~40 min of training)
if [[ $steps == *stage17c* ]]; then
  [ -f runs/gritsmol-v2-rag-hidden-cpu/adapter_config.json ] || gritkit train recipes/gritsmol_v2_rag_hidden_cpu.yaml --resume  # 17c
fi

evaluate() {  # name model suite tasks limit
  local limit=()
  [[ " $suites " == *" $3 "* ]] || return 0
  [ "$5" != all ] && limit=(--limit "$5")
  [ -f $out/$1-$3.json ] || gritkit eval --model "$2" --name "$1" --tasks "$4" "${limit[@]}" --threads $threads --output $out/$1-$3.json
}
models=("v1 runs/gritsmol-unified" "v2 runs/gritsmol-v2")
[ -n "${ABLATION:-}" ] && models+=("v2-norag runs/gritsmol-v2-norag")
# MODELS="name=run_dir ..." evaluates other runs instead (e.g. the GPU arms of recipes/device/README.md)
if [ -n "${MODELS:-}" ]; then models=(); for m in $MODELS; do models+=("${m%%=*} ${m#*=}"); done; fi
if [[ $steps == *eval* ]]; then
  if [ -z "${MODELS:-}" ]; then  # the baseline once, beside v1 and v2; MODELS= runs are read against it
    evaluate minilm st:minilm sts-full stsb,stsb_noinstruction all
    evaluate minilm st:minilm msmarco-full msmarco all
  fi
  for entry in "${models[@]}"; do
    set -- $entry
    # the v1 ablation suite, unchanged, so averages compare like for like
    evaluate $1 $2 sentence stsb,mrpc,banking77,twentynewsgroups 200
    evaluate $1 $2 reranking trecqa 30
    evaluate $1 $2 retrieval msmarco 5
    # enough examples to mean something
    evaluate $1 $2 sts-full stsb,stsb_noinstruction all
    evaluate $1 $2 msmarco-full msmarco all
    evaluate $1 $2 generative-100 mmlu,perplexity,nq_open 100
  done
fi
if [[ $steps == *rag* ]]; then
  for entry in "${models[@]}"; do
    set -- $entry
    [ -f $out/$1-rag.json ] || python benchmarks/rag_quality.py --model "$2" --corpora $rag_corpora --limit ${RAG_LIMIT:-60} \
      --modes $rag_modes --threads $threads --output $out/$1-rag.json
  done
fi
if [[ $steps == *report* ]]; then
  gritkit report $out/*-{sentence,reranking,retrieval,sts-full,msmarco-full,generative-100}.json --output-dir $out/report
fi
exit
}
