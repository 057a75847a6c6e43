# Sourced by the device scripts: paths, and `arms`, which trains a recipe's arms at once on the one GPU.
# RECIPE / RUN_PREFIX / ARMS choose the run: stage 2 (the default) or stage 10 (recipes/device/README.md).
export STAGE=${STAGE:-/root/gritstage} PYTHON=${PYTHON:-python3}
export PYTHONPATH=$PWD:$STAGE/site${PYTHONPATH_EXTRA:+:$PYTHONPATH_EXTRA} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=4 PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True
export RECIPE=${RECIPE:-recipes/gritsmol_v2_gpu.yaml} RUN_PREFIX=${RUN_PREFIX:-runs/gritsmol-v2-gpu-}
mkdir -p data && for d in $STAGE/data/*/; do ln -sfn ${d%/} data/$(basename $d); done

ARMS=${ARMS:-"gold-distill distill norag"}  # also: self (train.sh makes its targets first), k1, docs
arm_flags() {  # the flags that make an arm differ from $RECIPE
  case $1 in
    gold-distill) echo "--rag-target gold+distill" ;;
    distill) echo "--rag-target distill" ;;
    norag) echo "--rag-data []" ;;
    k1) echo "--rag-max-passages 1" ;;  # one passage per question, as the RAG table answers
    docs) echo "--rag-target gold+distill --rag-cache-modes [doc]" ;;  # every RAG question doc-cached (stage 13)
    self) echo "--rag-data [${SELF_RAG:-data/gritsmol-v2-gpu-mix/rag}] --rag-target gold" ;;  # self-distilled targets
  esac
}
arms() {  # arms [--output-dir-prefix P] [flags...]: each arm in its own process on the one GPU
  local prefix=$RUN_PREFIX
  if [ "$1" = --output-dir-prefix ]; then prefix=$2; shift 2; fi
  local pids=()
  mkdir -p "$(dirname ${prefix}x)"
  for arm in $ARMS; do
    $PYTHON -m gritkit train $RECIPE $(arm_flags $arm) --output-dir ${prefix}$arm "$@" > ${prefix}$arm.log 2>&1 &
    pids+=($!)
  done
  local failed=0
  for pid in "${pids[@]}"; do wait $pid || failed=1; done
  for arm in $ARMS; do echo "== $arm"; grep -v "it/s\]$" ${prefix}$arm.log | tail -5; done
  return $failed
}
