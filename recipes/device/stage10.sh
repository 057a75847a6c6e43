# Sourced by train.sh for stage 10 (PREPARE=recipes/device/stage10.sh): the shipped stage 7's own uncached
# answers to every TyDi QA train row of the mix, kept where they hold the gold span, beside stage 9's
# AdversarialQA targets, and the right ones as chat rows (commands as in recipes/gritsmol_v2_rag_gpu.yaml).
mkdir -p data/gritsmol-v10-self/rag
tydi=data/gritsmol-v10-self/rag/tydiqa.jsonl
# at most SELF_TIMEOUT seconds: the rows written by then are the targets (a half-written batch is cut off)
timeout ${SELF_TIMEOUT:-150} $PYTHON -m gritkit data self-targets data/gritsmol-v6-tydi/rag/tydiqa.jsonl --output $tydi \
  --model ${TARGETS_MODEL:-default} --max-answer-words 16 --batch-size 64 --max-new-tokens 48 ${SELF_LIMIT:+--limit $SELF_LIMIT} > $STAGE/self.log 2>&1 \
  || echo "self-targets stopped after ${SELF_TIMEOUT:-150} s"
if [ -f $tydi.progress ]; then
  $PYTHON -c "import json, os; os.truncate('$tydi', json.load(open('$tydi.progress'))['bytes'])"
else rm -f $tydi; fi
grep -v "it/s\]$" $STAGE/self.log | tail -2 | tee $STAGE/prepare.txt
cp data/gritsmol-v6-self/rag/adversarialqa.jsonl data/gritsmol-v10-self/rag/
# Quoref's targets where they were written (stage 15 on, recipes/device/README.md)
if [ -f data/gritsmol-v6-self/rag/quoref.jsonl ]; then cp data/gritsmol-v6-self/rag/quoref.jsonl data/gritsmol-v10-self/rag/; fi
$PYTHON -m gritkit data rag-chat data/gritsmol-v10-self/rag/*.jsonl --correct-only --output $STAGE/rag_chat.jsonl
# the first 400 (AdversarialQA's, then TyDi QA's): the chat stream stays about half general chat, as in stage 9
mkdir -p data/gritsmol-v10-selfchat/generative && head -n 400 $STAGE/rag_chat.jsonl > data/gritsmol-v10-selfchat/generative/rag_chat.jsonl
wc -l data/gritsmol-v10-self/rag/*.jsonl data/gritsmol-v10-selfchat/generative/rag_chat.jsonl | tee -a $STAGE/prepare.txt
