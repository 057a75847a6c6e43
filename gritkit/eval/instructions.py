"""Per-task embedding instructions, in the style of the GritLM paper's appendix (after E5-Mistral).

Queries get the instruction and documents none (retrieval, reranking). In symmetric tasks
(STS, pair classification, classification, clustering) every text is a "query" and gets it.
Keys are gritkit task names and MTEB task names; :func:`instruction_for` falls back to a
generic instruction per task type.
"""

from __future__ import annotations

INSTRUCTIONS: dict[str, str] = {
    # gritkit tasks
    "stsb": "Retrieve semantically similar text",
    "mrpc": "Retrieve sentences that are paraphrases of the given sentence",
    "banking77": "Given a online banking query, find the corresponding intents",
    "twentynewsgroups": "Identify the topic or theme of the given news articles",
    "trecqa": "Given a question, retrieve sentences that answer the question",
    "wikiqa": "Given a question, retrieve Wikipedia sentences that answer the question",
    "msmarco": "Given a web search query, retrieve relevant passages that answer the query",
    # MTEB names of the same or related tasks, as in the paper
    "STSBenchmark": "Retrieve semantically similar text",
    "Banking77Classification": "Given a online banking query, find the corresponding intents",
    "TwentyNewsgroupsClustering": "Identify the topic or theme of the given news articles",
    "MSMARCO": "Given a web search query, retrieve relevant passages that answer the query",
    "SprintDuplicateQuestions": "Retrieve duplicate questions from Sprint forum",
    "TwitterSemEval2015": "Retrieve tweets that are semantically similar to the given tweet",
    "AskUbuntuDupQuestions": "Retrieve duplicate questions from AskUbuntu forum",
    "SciFact": "Given a scientific claim, retrieve documents that support or refute the claim",
    "NFCorpus": "Given a question, retrieve relevant documents that best answer the question",
}

TYPE_INSTRUCTIONS: dict[str, str] = {
    "sts": "Retrieve semantically similar text",
    "pairclassification": "Retrieve text that is semantically equivalent to the given text",
    "classification": "Classify the given text into its category",
    "clustering": "Identify the topic or theme of the given text",
    "reranking": "Given a query, retrieve relevant passages",
    "retrieval": "Given a query, retrieve relevant passages",
}


def instruction_for(task: str, task_type: str = "") -> str:
    """The query instruction of ``task`` (gritkit or MTEB name), else the generic one of its type."""
    type_key = "".join(char for char in task_type.lower() if char.isalpha())  # "PairClassification", "pair_classification"
    return INSTRUCTIONS.get(task) or TYPE_INSTRUCTIONS.get(type_key, "")
