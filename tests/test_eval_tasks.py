"""Task pipelines, loaders on the real data files, the HumanEval sandbox, reports.

A bag-of-words encoder (a real, deterministic Encoder) gives cosines that can be worked out by
hand, so each task's score is checked exactly; tiny random models run the generative paths.
"""

import datetime
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from gritkit.eval import data, report, result
from gritkit.eval.encoders import Encoder, GritEncoder, encode_unique
from gritkit.eval.instructions import instruction_for
from gritkit.eval.runner import evaluate, run_task
from gritkit.eval.tasks import (GROUPS, TASKS, bbh, classification, clustering, gsm8k, humaneval, mmlu, open_ended,
                                pair_classification, parse_tasks, perplexity, reranking, retrieval, sts, tydiqa)


class BagOfWords:
    """Unit vectors of word counts over a fixed vocabulary; records the instructions it was given."""

    name = "bag-of-words"

    def __init__(self):
        self.vocabulary: dict[str, int] = {}
        self.calls: list[tuple[str, int]] = []

    def encode(self, texts, instruction="", *, show_progress_bar=False):
        self.calls.append((instruction, len(texts)))
        rows = []
        for text in texts:
            row = np.zeros(64, dtype=np.float32)
            for word in text.lower().split():
                row[self.vocabulary.setdefault(word, len(self.vocabulary))] += 1
            rows.append(row / np.linalg.norm(row))
        return np.stack(rows)


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# ---------------------------------------------------------------- data

def test_subset_is_deterministic_and_keeps_order():
    items = list(range(100))
    first = data.subset(items, 10)
    assert first == data.subset(items, 10) and first == sorted(first) and len(set(first)) == 10
    assert first != items[:10]  # random, not the head of a sorted file
    assert data.subset(items, None) == items and data.subset(items, 500) == items
    with pytest.raises(ValueError):
        data.subset(items, 0)


def test_read_table_header_detection(tmp_path):
    headerless = write(tmp_path / "a.csv", 'one,"two, quoted",3.5\n')
    assert data.read_table(headerless, ("sentence1", "sentence2", "score")) == [{"sentence1": "one", "sentence2": "two, quoted", "score": "3.5"}]
    with_header = write(tmp_path / "b.tsv", 'label\ttext\n1\tsays "hi\n')
    assert data.read_table(with_header) == [{"label": "1", "text": 'says "hi'}]
    with pytest.raises(ValueError, match="no header"):
        data.read_table(headerless)
    with pytest.raises(FileNotFoundError, match="GRITKIT_DATA"):
        data.resolve("no/such/file.csv")


@pytest.mark.needs_data
def test_loaders_on_the_real_files(tmp_path):
    stsb = sts.load_pairs("stsb/stsb-en-test.csv")
    assert len(stsb) == 1379 and stsb[0] == ("A girl is styling her hair.", "A girl is brushing her hair.", 2.5)
    mrpc = sts.load_pairs("mrpc/msr-para-test.tsv")
    assert len(mrpc) == 1725 and {pair[2] for pair in mrpc} == {0.0, 1.0}
    banking = classification.load_labelled("banking77/test.csv")
    assert len(banking) == 3080 and len({label for _, label in banking}) == 77
    news = classification.load_labelled("twentynewsgroups/test.jsonl.gz", "subject")
    assert len(news) == 7532 and len({label for _, label in news}) == 20
    assert len(reranking.load_groups("trecqa/test.csv")) == 68  # the "clean" questions with both labels
    assert len(reranking.load_groups("wikiqa/test.jsonl")) == 237
    corpus, queries, qrels = retrieval.load_beir("retrieval_nano/msmarco")
    assert (len(corpus), len(queries), len(qrels)) == (5000, 50, 43)
    assert sum(len(grades) for grades in qrels.values()) == 4102
    questions = mmlu.load_mmlu("mmlu")
    assert len(questions) == 14042 and len({q.subject for q in questions}) == 57
    assert all(q.answer in mmlu.LETTERS for q in questions)
    examples, prompts = bbh.load_bbh("bbh")
    assert len(examples) == 6511 and len(prompts) == 27 and "canary" not in prompts["navigate"]
    assert len(tydiqa.load_squad("tydiqa_goldp/train/tydiqa.goldp.en.train.json")) == 3696
    dev = tydiqa.load_squad("tydiqa_goldp/dev/tydiqa.goldp.en.dev.json")  # its answers were once blanked
    assert len(dev) == 440 and all(answer.strip() for item in dev for answer in item.answers)
    assert len(tydiqa.load_squad("squad_v1_dev/dev-v1.1.json")) == 10570
    assert len(open_ended.load_instructions("alpaca_eval/alpaca_eval.jsonl")) == 805
    user = open_ended.load_instructions("selfinstruct_user_oriented/user_oriented_instructions.jsonl")
    assert len(user) == 252 and user[0].endswith("please let me know.")  # instruction, then its input
    assert len(data.read_jsonl("humaneval/HumanEval.jsonl.gz")) == 164
    assert gsm8k.gold_number(data.read_jsonl("gsm8k/test.jsonl")[0]["answer"]) == 18


def test_every_named_task_has_data_and_instructions():
    assert set(GROUPS["all"]) == set(TASKS)
    for name in GROUPS["embedding"]:
        assert instruction_for(name) or TASKS[name].instruction == ""  # "" only where a task says so
    assert parse_tasks("stsb,embedding,bbh:navigate")[:3] == ["stsb", "stsb_noinstruction", "mrpc"]
    assert "bbh:navigate" in parse_tasks("bbh:navigate")
    with pytest.raises(ValueError, match="unknown task"):
        parse_tasks("stsb,nope")
    with pytest.raises(ValueError, match="no variants"):
        parse_tasks("stsb:x")


# ---------------------------------------------------------------- embedding tasks, exact scores

def test_sts_and_pair_classification(tmp_path):
    path = write(tmp_path / "pairs.csv", "a b,a b,5\na b,a c,2.5\na b,c d,0\n")  # cosines 1, 1/2, 0
    assert sts.evaluate(BagOfWords(), path).value == pytest.approx(1.0)
    # a pair the training split holds (here in the other order) is left out of spearman_unseen only
    mixed = write(tmp_path / "mixed.csv", "a b,a b,0\na b,a c,2.5\na b,c d,5\nc d,c e,1\n")  # cosines 1, .5, 0, .5
    seen = write(tmp_path / "train.csv", "c d,a b,4\n")
    score = sts.evaluate(BagOfWords(), mixed, seen_path=seen)
    assert score.n == 4 and score.extra["n_unseen"] == 3
    assert score.value == pytest.approx(-0.9487, abs=1e-3) and score.extra["spearman_unseen"] == pytest.approx(-0.8660, abs=1e-3)
    labelled = write(tmp_path / "pairs.jsonl", "\n".join(json.dumps({"sentence1": a, "sentence2": b, "label": y}) for a, b, y in
                     [("a b", "a b", 1), ("a b", "a c", 0), ("a b", "c d", 0), ("x y", "x z", 1)]))
    score = pair_classification.evaluate(BagOfWords(), labelled)
    # cosines 1, 1/2, 0, 1/2 -> best threshold 1/2: 2 of 3 predicted positives right, both positives found -> F1 0.8
    assert score.value == pytest.approx(0.8) and score.n == 4


def test_reranking_map_and_mrr(tmp_path):
    rows = [("x y", "x y", 0), ("x y", "x", 1), ("x y", "z", 0),   # ranked x y, x, z: AP 1/2
            ("p", "p", 1), ("p", "q", 0),                           # AP 1
            ("only", "only", 1)]                                    # all positive: skipped
    path = write(tmp_path / "rerank.csv", "qtext,label,atext\n" + "".join(f"{q},{y},{a}\n" for q, a, y in rows))
    encoder = BagOfWords()
    score = reranking.evaluate(encoder, path, instruction="Find answers")
    assert (score.value, score.extra["mrr_at_10"], score.n) == (pytest.approx(0.75), pytest.approx(0.75), 2)
    assert encoder.calls == [("Find answers", 2), ("", 5)]  # queries get the instruction, candidates none


def test_retrieval_on_a_beir_folder(tmp_path):
    write(tmp_path / "corpus.jsonl", "\n".join(json.dumps({"_id": i, "title": "", "text": t}) for i, t in
                                                [("d1", "apple banana"), ("d2", "car"), ("d3", "apple")]))
    write(tmp_path / "queries.jsonl", '{"_id": "q1", "text": "apple banana"}\n{"_id": "q2", "text": "apple"}\n{"_id": "q3", "text": "car"}\n')
    write(tmp_path / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td3\t1\nq2\td2\t1\n")
    encoder = BagOfWords()
    score = retrieval.evaluate(encoder, tmp_path, instruction="Retrieve")
    # q1 ranks d1, d3 first: nDCG 1, MRR 1; q2 ranks d3, d1, d2: nDCG 1/log2(4), MRR 1/3; q3 has no qrels
    assert score.n == 2
    assert score.value == pytest.approx((1 + 0.5) / 2)
    assert score.extra["mrr_at_10"] == pytest.approx((1 + 1 / 3) / 2) and score.extra["recall_at_100"] == 1.0
    assert encoder.calls == [("", 3), ("Retrieve", 2)]  # documents without instruction


def test_classification_and_clustering(tmp_path):
    rows = [("apple fruit", "fruit"), ("banana fruit", "fruit"), ("pear fruit", "fruit"),
            ("car engine", "vehicle"), ("bus engine", "vehicle"), ("truck engine", "vehicle")]
    path = write(tmp_path / "texts.csv", "text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    score = classification.evaluate(BagOfWords(), path, path, samples_per_label=2)
    assert score.value == 1.0 and score.extra["train_size"] == 4 and score.n == 6
    assert clustering.evaluate(BagOfWords(), path).value == pytest.approx(1.0)
    assert len(classification.per_label(rows, 1)) == 2


def test_grit_encoder_runs_a_task_with_a_tiny_model(tiny_model, tmp_path):
    encoder = GritEncoder(tiny_model("llama"))
    assert isinstance(encoder, Encoder)
    vectors = encode_unique(encoder, ["a cat", "a dog", "a cat"], "Represent", show_progress_bar=False)
    assert vectors.shape == (3, 64) and np.allclose(vectors[0], vectors[2]) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    path = write(tmp_path / "pairs.csv", "a cat,a kitten,4\na dog,a car,1\nthe sun,the moon,2\n")
    assert -1 <= sts.evaluate(encoder, path, instruction="Retrieve semantically similar text").value <= 1


# ---------------------------------------------------------------- generative tasks on a tiny random model

@pytest.mark.needs_data
def test_generative_tasks_run_end_to_end(tiny_model, tmp_path):
    model = tiny_model("llama")
    assert 0 <= mmlu.evaluate(model, "mmlu", limit=3, shots=1).value <= 1
    score = gsm8k.evaluate(model, "gsm8k/test.jsonl", "gsm8k/train.jsonl", limit=2, shots=2, max_new_tokens=4)
    assert score.n == 2 and len(score.outputs) == 2
    score = bbh.evaluate(model, "bbh", limit=2, tasks=["navigate", "snarks"], max_new_tokens=4)
    assert score.n == 2 and all(key.startswith("exact_match/") for key in score.extra)
    score = tydiqa.evaluate(model, "tydiqa_goldp/dev/tydiqa.goldp.en.dev.json", limit=2, max_new_tokens=4)
    assert score.metric == "f1" and score.n == 2
    score = humaneval.evaluate(model, "humaneval/HumanEval.jsonl.gz", limit=1, max_new_tokens=4, timeout=5)
    assert score.value == 0.0 and score.outputs[0]["error"]  # four random tokens do not pass
    score = open_ended.evaluate(model, "alpaca_eval/alpaca_eval.jsonl", limit=2, max_new_tokens=3)
    assert score.n == 2 and score.extra["mean_tokens"] <= 3 and {"instruction", "output", "generator"} <= set(score.outputs[0])


@pytest.mark.needs_data
def test_perplexity_of_a_random_model_is_about_the_vocabulary_size(tiny_model):
    model = tiny_model("llama")
    value = perplexity.evaluate(model, "alpaca_eval/alpaca_eval.jsonl", limit=2).value
    vocabulary = model.config.vocab_size
    assert vocabulary / 2 < value < vocabulary * 2  # near-uniform next-token distribution


def test_generative_task_needs_a_grit_model():
    with pytest.raises(TypeError, match="needs a GritLM"):
        run_task(BagOfWords(), "mmlu", limit=1)


# ---------------------------------------------------------------- HumanEval execution

@pytest.mark.needs_data
def test_humaneval_runs_a_correct_and_a_wrong_completion():
    problem = data.read_jsonl("humaneval/HumanEval.jsonl.gz")[0]
    assert humaneval.run_program(humaneval.check_program(problem, problem["canonical_solution"])) == (True, "")
    ok, error = humaneval.run_program(humaneval.check_program(problem, "    return False\n"))
    assert not ok and "AssertionError" in error


def test_humaneval_sandbox_limits(tmp_path):
    ok, error = humaneval.run_program("while True:\n    pass\n", timeout=1)
    assert not ok and "timed out" in error
    ok, error = humaneval.run_program("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n")
    assert not ok and "network" in error
    ok, _ = humaneval.run_program(f"open({str(tmp_path / 'x')!r}, 'w')\nimport os\nassert os.listdir('.') == ['program.py']\n")
    assert ok  # runs in its own empty folder (other paths are not hidden: a guard, not a sandbox)


# ---------------------------------------------------------------- runner and report

def test_runner_saves_records_and_report_renders(tmp_path, monkeypatch):
    monkeypatch.setitem(TASKS, "toy_sts", TASKS["stsb"].__class__("embedding", "toy", lambda encoder, instruction, limit: sts.evaluate(
        encoder, write(tmp_path / "p.csv", "a b,a b,5\na b,a c,2.5\na b,c d,0\n"), instruction=instruction, limit=limit)))
    output = tmp_path / "results" / "toy.json"
    records = evaluate(BagOfWords(), "toy_sts,mmlu", output=output, limit=3)
    assert [r.task for r in records] == ["toy_sts"]  # mmlu skipped: not a generative model
    saved = json.loads(output.read_text())
    assert set(saved[0]) >= {"model", "task", "metric", "value", "n", "seconds", "commit"}
    assert saved[0]["model"] == "bag-of-words" and saved[0]["value"] == pytest.approx(1.0) and saved[0]["limit"] == 3
    facts = saved[0]["provenance"]  # how the record was made, as the benchmark records say it
    assert facts["cpu"] and facts["torch_threads"] >= 1 and facts["command"].split()[0] == Path(sys.argv[0]).name
    assert datetime.datetime.fromisoformat(facts["date"]).tzinfo is not None
    assert result.load_records(output)[0].provenance == facts
    other = tmp_path / "other.json"
    result.save_records([result.Record("st:x", "toy_sts", "spearman", 0.5, 3, 1.0, "abc"),
                         result.Record("st:x", "perplexity", "perplexity", 12.345, 2, 1.0, "abc"),
                         result.Record("st:x", "mmlu", "accuracy", 0.29, 100, 1.0, "abc")], other)
    text = report.write_report([output, other], tmp_path / "report")
    assert "| toy_sts | spearman | 3 | 100.0 | 50.0 |" in text and "| perplexity | perplexity | 2 | – | 12.35 |" in text
    assert "| **embedding average** | | | 100.0 | 50.0 |" in text
    assert "| mmlu | accuracy | 100 | – | 29.0 [21.0, 38.5] |" in text  # proportions get a Wilson interval
    assert "| **generative average** | | | – | 29.0 |" in text  # perplexity is not averaged; missing tasks give –
    png = (tmp_path / "report" / "report.png").read_bytes()
    assert png.startswith(b"\x89PNG") and (tmp_path / "report" / "report.md").read_text() == text
