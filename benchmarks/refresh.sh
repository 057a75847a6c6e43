#!/usr/bin/env bash
# Re-measure, one after another, every record behind the README's "Core benchmarks" table and the
# other records the README and docs cite, each with its documented command and threads, so that
# each record states a clean commit (tests/test_provenance.py fails for a cited record that does not).
# Run it on an idle machine (hours on 2 cores).
#
#   benchmarks/refresh.sh                          # all of them
#   benchmarks/refresh.sh embed_throughput serve_load   # only these steps (names below)
#
# GRITKIT_BENCHMARK_RESULTS=DIR writes the records to DIR instead of benchmarks/results (a trial run).
# Then: python benchmarks/core_table.py and python benchmarks/doc_tables.py, paste their tables into README.md
# and docs/ (tests/test_provenance.py and tests/test_doc_tables.py check them), and update the prose that cites them.
{  # bash reads the whole block before running it, so editing this file mid-run cannot change the run
set -euo pipefail
cd "$(dirname "$0")/.."

# The same notion of clean as benchmarks/common.machine(): records under benchmarks/results are not code.
dirty=$(git status --porcelain --untracked-files=no -- ':/' ':(top,exclude)benchmarks/results')
if [[ -n "$dirty" ]]; then
    echo "refusing to start: the tree has uncommitted changes, so no record would state a clean commit:" >&2
    echo "$dirty" >&2
    exit 1
fi

python=${PYTHON:-python}
out=${GRITKIT_BENCHMARK_RESULTS:-benchmarks/results}
export GRITKIT_BENCHMARK_RESULTS=$out HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"

# name|command (threads as each page documents them; the scripts that take --threads set their own).
# index_build writes index_build.json and index_search_hnsw.json.
steps=(
    "cli_startup|$python benchmarks/cli_startup.py"
    "embed_throughput|OMP_NUM_THREADS=1 $python benchmarks/embed_throughput.py --texts 128 --repeats 2"
    "generate_speed|OMP_NUM_THREADS=1 $python benchmarks/generate_speed.py --new-tokens 64 --repeats 3"
    "generate_speed_llamacpp|$python benchmarks/generate_speed.py --llamacpp-backend --new-tokens 128 --repeats 5"
    "gradcache_memory_cpu|$python benchmarks/gradcache_memory.py --sizes 4,8,16,32 --chunk-size 4 --passage-words 24 --output $out/gradcache_memory_cpu.json"
    "gguf_speed|OMP_NUM_THREADS=1 $python benchmarks/gguf_speed.py --new-tokens 64 --repeats 2 --dtypes q8_0 --texts 4"
    "compact_embeddings|OMP_NUM_THREADS=1 $python benchmarks/compact_embeddings.py --tasks stsb,msmarco --sts-limit 300 --msmarco-limit 5 --max-length 128"
    "index_build|$python benchmarks/index_build.py --docs 2000 --vectors 100000 --queries 500"
    "rag_latency|$python benchmarks/rag_latency.py --lengths 250 500 1000 2000 4000 --repeats 2 --threads 1 --output $out/rag_latency.json"
    "serve_abuse|OMP_NUM_THREADS=1 $python benchmarks/serve_abuse.py"
    "serve_load|$python benchmarks/serve_load.py --seconds 30 --ratio-seconds 20 --grace 30 --output $out/serve_load.json"
)

names=()
for step in "${steps[@]}"; do names+=("${step%%|*}"); done
for wanted in "$@"; do
    [[ " ${names[*]} " == *" $wanted "* ]] || { echo "unknown step $wanted; steps: ${names[*]}" >&2; exit 2; }
done

for step in "${steps[@]}"; do
    name=${step%%|*}
    command=${step#*|}
    if [[ $# -gt 0 && " $* " != *" $name "* ]]; then
        continue
    fi
    echo "== $name: $command ($(date -u +%FT%TZ))"
    bash -c "$command"
done
echo "== done; records in $out"
exit
}
