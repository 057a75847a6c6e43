"""The RAG quality harness (gritkit.eval.tasks.rag_qa): corpora, metrics, the degenerate detector, resuming."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from gritkit.eval.metrics import contains_answer, is_degenerate
from gritkit.eval.tasks import rag_qa
from gritkit.eval.tasks.tydiqa import QA
from gritkit.rag import RAG


def test_match_is_case_insensitive_containment_of_any_gold_answer():
    assert contains_answer("It was completed in 1889.", ["1887", "1889"]) == 1.0
    assert contains_answer("GUIDO VAN ROSSUM created it", ["Guido van Rossum"]) == 1.0
    assert contains_answer("It was built in 1887.", ["1889"]) == 0.0
    assert contains_answer("anything", ["", "  "]) == 0.0  # a blank gold answer matches nothing


@pytest.mark.parametrize("text", [
    "The E-E-T-E-E-E-E-E-E-E-E-E",                                   # a two-symbol unit back to back
    "no no no",                                                      # one word three times in a row
    "Python is a language created by the Python is a language created by the Python is a",  # a loop
    "Martin Luther was ordained on 18 February 18 February 18 February",  # a two-word unit
    "The first synthetic molecule was called 1,111,111,111,111,111,1",    # digit groups that are not round
    "The answer is!!!!!!!!!!!!",                                        # a run longer than any Markdown marker
])
def test_looping_outputs_are_degenerate(text):
    assert is_degenerate(text)


@pytest.mark.parametrize("text", [
    "", "The Eiffel Tower was completed in 1889.", "1, 2, 3, 4", "The answer is the the answer",
    "Python is a programming language created by Guido van Rossum and first released in 1991.",
    "Russia has a total of 21,000,000,000 troops.",                       # a round number is one token
    "The Super Bowl has been played eight times.\n#### 8",               # Markdown's marker is one token
    "It weighed 1,000,000 kg... or 2,000,000 kg... or 3,000,000 kg",     # "..." is one token
])
def test_ordinary_answers_are_not_degenerate(text):
    assert not is_degenerate(text)


def test_scores_of_rows():
    rows = [{"output": "In 1889.", "answers": ["1889"], "seconds": 1.0},
            {"output": "1889", "answers": ["1889"], "seconds": 3.0},
            {"output": "no no no no", "answers": ["yes"], "seconds": 2.0}]
    scores = rag_qa.answer_scores(rows)
    assert scores["match"] == pytest.approx(2 / 3) and scores["exact_match"] == pytest.approx(1 / 3)
    assert scores["degenerate"] == pytest.approx(1 / 3) and scores["seconds"] == 2.0 and scores["n"] == 3
    assert 1 / 3 < scores["f1"] < 2 / 3
    retrieval = rag_qa.retrieval_scores([{"gold": "1", "top5": ["1", "2"]}, {"gold": "3", "top5": ["2", "3"]},
                                         {"gold": "9", "top5": ["2"]}])
    assert retrieval["top1"] == pytest.approx(1 / 3) and retrieval["top5"] == pytest.approx(2 / 3)


def test_corpora_hold_every_paragraph_and_a_fixed_squad_sample():
    tydiqa = rag_qa.load_corpus("tydiqa")
    assert len(tydiqa.questions) == 440 and len(tydiqa.passages) == 429
    squad = rag_qa.load_corpus("squad")
    assert len(squad.questions) == 300 and len(squad.passages) == 2067
    assert [q.id for q in rag_qa.load_corpus("squad").questions] == [q.id for q in squad.questions]
    assert all(squad.passages[int(squad.gold_id(q))] == q.context for q in squad.questions)
    with pytest.raises(ValueError, match="corpus must be one of"):
        rag_qa.load_corpus("nq")


def test_answers_are_saved_as_made_and_a_rerun_resumes(default_model, tmp_path):
    passages = ["The Eiffel Tower in Paris was completed in 1889.", "Python was created by Guido van Rossum."]
    questions = [QA("q1", passages[0], "When was the Eiffel Tower completed?", ["1889"]),
                 QA("q2", passages[1], "Who created Python?", ["Guido van Rossum"])]
    corpus = rag_qa.Corpus("tiny", questions, passages)
    index = rag_qa.open_index(default_model, corpus, tmp_path / "index")
    assert index.kv_kinds == ("bidirectional", "causal") and len(index.kv) == 0  # states made on demand
    retrieval = rag_qa.retrieval_rows(index, corpus, tmp_path / "retrieval.jsonl")
    assert rag_qa.retrieval_scores(list(retrieval.values()))["top1"] == 1.0

    path = tmp_path / "doc_causal.jsonl"
    path.write_text(json.dumps({"id": "q1", "output": "earlier", "answers": ["1889"], "seconds": 0.5}) + "\n{\"id\": ")
    mode = rag_qa.MODES_BY_NAME["doc_causal"]
    rows = rag_qa.answer_rows(RAG(default_model, index), mode, corpus, path, max_new_tokens=8)
    assert rows["q1"]["output"] == "earlier"  # kept, not answered again; the torn line is skipped
    assert rows["q2"]["passage"] == "1" and rows["q2"]["cache_build_s"] > 0
    assert set(rag_qa.read_rows(path)) == {"q1", "q2"}
    assert rag_qa.open_index(default_model, corpus, tmp_path / "index").stats()["documents"] == 2


def test_a_stopped_index_build_goes_on_where_it_stopped(default_model, tmp_path):
    passages = ["The Eiffel Tower in Paris was completed in 1889.", "Python was created by Guido van Rossum.",
                "Mount Everest is 8,849 metres high."]
    first = rag_qa.open_index(default_model, rag_qa.Corpus("tiny", [], passages[:2]), tmp_path / "index")
    chunks = [first.search(text, k=1)[0].chunk_id for text in passages[:2]]
    first.close()
    (tmp_path / "index" / "complete").unlink()  # as if killed before the last batch
    index = rag_qa.open_index(default_model, rag_qa.Corpus("tiny", [], passages), tmp_path / "index")
    assert index.document_ids() == ["0", "1", "2"]
    assert [index.search(text, k=1)[0].chunk_id for text in passages[:2]] == chunks  # kept, not embedded again
    assert index.search(passages[2], k=1)[0].doc_id == "2"


def test_runs_opening_one_index_at_once_build_it_once(default_model, tmp_path):
    passages = ["The Eiffel Tower in Paris was completed in 1889.", "Python was created by Guido van Rossum.",
                "Mount Everest is 8,849 metres high."]
    corpus = rag_qa.Corpus("tiny", [], passages)

    def open_and_search(_):  # an index is used in the thread that opened it (SQLite)
        index = rag_qa.open_index(default_model, corpus, tmp_path / "index")
        try:
            return index.document_ids(), index.search(passages[2], k=1)[0].doc_id
        finally:
            index.close()

    embedded = []  # rows of every embedding pass
    hook = default_model.backbone.register_forward_pre_hook(
        lambda module, args, kwargs: embedded.append(len(kwargs["input_ids"])), with_kwargs=True)
    try:
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(open_and_search, range(2)))
    finally:
        hook.remove()
    assert sum(embedded) == len(passages) + 2  # each passage once, and each run's one search query
    assert results == [(["0", "1", "2"], "2")] * 2
