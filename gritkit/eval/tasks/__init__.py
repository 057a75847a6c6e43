"""The evaluation tasks: one module per task family, and the table of named tasks over our data.

Each family module has a loader (any data set in the same layout works: pass its path to the
module's ``evaluate``) and ``evaluate(model_or_encoder, paths..., limit=...) -> Score``.
Data paths are relative to :func:`gritkit.paths.data_dir`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Literal

from gritkit.results import Score
from gritkit.eval.tasks import (bbh, classification, clustering, gsm8k, humaneval, mmlu, open_ended, pair_classification,
                                nq_open, perplexity, reranking, retrieval, sts, tydiqa)

TaskKind = Literal["embedding", "generative"]


@dataclass(frozen=True)
class Task:
    """A named task: its kind, what it measures, and ``run(model, limit=..., ...) -> Score``."""

    kind: TaskKind
    about: str
    run: Callable[..., Score]
    variant: str | None = None  # the keyword a "name:value" spec sets, e.g. bbh:boolean_expressions -> tasks=[...]
    instruction: str | None = None  # embedding tasks: overrides the registry's instruction ("" = none)


TASKS: dict[str, Task] = {
    # embedding: run(encoder, instruction=..., limit=...)
    "stsb": Task("embedding", "STS Benchmark test, Spearman of cosine",
                 partial(sts.evaluate, path="stsb/stsb-en-test.csv", seen_path="stsb/stsb-en-train.csv")),
    "stsb_noinstruction": Task("embedding", "STS Benchmark test without any instruction, Spearman of cosine",
                               partial(sts.evaluate, path="stsb/stsb-en-test.csv", seen_path="stsb/stsb-en-train.csv"),
                               instruction=""),
    "mrpc": Task("embedding", "MRPC test, max-F1 of cosine", partial(pair_classification.evaluate, path="mrpc/msr-para-test.tsv")),
    "banking77": Task("embedding", "Banking77, logistic regression on 8 train texts per label, accuracy",
                      partial(classification.evaluate, train_path="banking77/train.csv", test_path="banking77/test.csv")),
    "twentynewsgroups": Task("embedding", "20 Newsgroups test subject lines, k-means V-measure",
                             partial(clustering.evaluate, path="twentynewsgroups/test.jsonl.gz", text_field="subject")),
    "trecqa": Task("embedding", "TrecQA test answer selection, MAP", partial(reranking.evaluate, path="trecqa/test.csv")),
    "wikiqa": Task("embedding", "WikiQA test answer selection, MAP", partial(reranking.evaluate, path="wikiqa/test.jsonl")),
    "msmarco": Task("embedding", "MS MARCO 50-query BEIR subset, nDCG@10",
                    partial(retrieval.evaluate, folder="retrieval_nano/msmarco")),
    # generative: run(model, limit=..., chat=...)
    "mmlu": Task("generative", "MMLU test, 0-shot, option-letter log-likelihood, accuracy", partial(mmlu.evaluate, folder="mmlu")),
    "gsm8k": Task("generative", "GSM8K test, 8-shot CoT, exact match of the last number",
                  partial(gsm8k.evaluate, test_path="gsm8k/test.jsonl", train_path="gsm8k/train.jsonl")),
    "bbh": Task("generative", "BIG-Bench Hard, 3-shot CoT, exact match (bbh:<task> for one task)",
                partial(bbh.evaluate, folder="bbh"), variant="tasks"),
    "tydiqa": Task("generative", "TyDi QA GoldP English dev, 1-shot, F1",
                   partial(tydiqa.evaluate, path="tydiqa_goldp/dev/tydiqa.goldp.en.dev.json")),
    "nq_open": Task("generative", "NQ-open dev, closed book (no passage), answer match",
                    partial(nq_open.evaluate, path="nq_open/NQ-open.dev.jsonl")),
    "humaneval": Task("generative", "HumanEval, greedy pass@1 (sandboxed subprocess)",
                      partial(humaneval.evaluate, path="humaneval/HumanEval.jsonl.gz")),
    "alpaca_eval": Task("generative", "AlpacaEval prompts, generate + save, completion rate",
                        partial(open_ended.evaluate, path="alpaca_eval/alpaca_eval.jsonl")),
    "user_oriented": Task("generative", "Self-Instruct user-oriented prompts, generate + save, completion rate",
                          partial(open_ended.evaluate, path="selfinstruct_user_oriented/user_oriented_instructions.jsonl")),
    "perplexity": Task("generative", "Perplexity of AlpacaEval reference answers (lower is better)",
                       partial(perplexity.evaluate, path="alpaca_eval/alpaca_eval.jsonl")),
}

GROUPS: dict[str, list[str]] = {
    "embedding": [name for name, task in TASKS.items() if task.kind == "embedding"],
    "generative": [name for name, task in TASKS.items() if task.kind == "generative"],
}
GROUPS["all"] = GROUPS["embedding"] + GROUPS["generative"]


def parse_tasks(spec: str) -> list[str]:
    """"stsb,bbh:navigate,embedding" -> task specs, groups expanded; unknown names are an error."""
    names = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        base = item.split(":", 1)[0]
        if item in GROUPS:
            names += GROUPS[item]
        elif base not in TASKS:
            raise ValueError(f"unknown task {base!r}; known: {', '.join([*TASKS, *GROUPS])}")
        elif ":" in item and TASKS[base].variant is None:
            raise ValueError(f"task {base!r} has no variants ({item!r})")
        else:
            names.append(item)
    if not names:
        raise ValueError("no tasks given")
    return list(dict.fromkeys(names))
