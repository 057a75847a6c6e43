"""Each metric against values worked out by hand on tiny inputs."""

import math

import pytest

from gritkit.eval import metrics


def test_ndcg_three_documents():
    # ranking d1 (grade 0), d2 (grade 2), d3 (grade 1); the ideal order is d2, d3
    dcg = 0 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    idcg = 2 / math.log2(2) + 1 / math.log2(3)
    assert metrics.ndcg_at_k(["d1", "d2", "d3"], {"d2": 2, "d3": 1}, k=10) == pytest.approx(dcg / idcg)
    assert dcg / idcg == pytest.approx(0.6697, abs=1e-4)
    assert metrics.ndcg_at_k(["d2", "d3", "d1"], {"d2": 2, "d3": 1}) == pytest.approx(1.0)
    # cut at k=1: only d1 counts, which is not relevant
    assert metrics.ndcg_at_k(["d1", "d2", "d3"], {"d2": 2, "d3": 1}, k=1) == 0.0


def test_ndcg_matches_sklearn():
    from sklearn.metrics import ndcg_score

    grades = {"a": 3, "b": 0, "c": 1, "d": 2}
    ranking = ["b", "d", "a", "c"]
    scores = {doc: len(ranking) - rank for rank, doc in enumerate(ranking)}
    docs = list(grades)
    expected = ndcg_score([[grades[d] for d in docs]], [[scores[d] for d in docs]], k=3)
    assert metrics.ndcg_at_k(ranking, grades, k=3) == pytest.approx(expected)


def test_mrr_and_recall():
    assert metrics.mrr_at_k(["x", "a", "b"], {"a": 1, "b": 1}) == 0.5
    assert metrics.mrr_at_k(["x", "y", "a"], {"a": 1}, k=2) == 0.0
    assert metrics.recall_at_k(["a", "x", "b"], {"a": 1, "b": 2, "c": 1}, k=2) == pytest.approx(1 / 3)
    assert metrics.recall_at_k(["a", "x", "b"], {"a": 1, "b": 2, "c": 1}, k=3) == pytest.approx(2 / 3)
    assert metrics.recall_at_k(["a"], {"a": 0}) == 0.0  # grade 0 is not relevant


def test_spearman_by_rank_differences():
    # ranks of gold: 1 2 4 3 -> squared differences 0 0 1 1 -> 1 - 6*2 / (4*15)
    assert metrics.spearman([1, 2, 3, 4], [10, 20, 40, 30]) == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert metrics.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_average_precision_and_map():
    # positives at ranks 1 and 3: (1/1 + 2/3) / 2
    first = metrics.average_precision([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0])
    assert first == pytest.approx((1 + 2 / 3) / 2)
    # one positive at rank 2: 1/2
    assert metrics.average_precision([0.9, 0.1], [0, 1]) == pytest.approx(0.5)
    assert metrics.mean_average_precision([([0.9, 0.8, 0.7, 0.6], [1, 0, 1, 0]), ([0.9, 0.1], [0, 1])]) == pytest.approx(
        ((1 + 2 / 3) / 2 + 0.5) / 2)


def test_max_f1_picks_the_best_threshold():
    scores, labels = [0.9, 0.8, 0.7, 0.6, 0.5], [1, 1, 0, 1, 0]
    # thresholds 0.9 .. 0.5 give F1 1/2, 4/5, 2/3, 6/7, 3/4
    f1, threshold = metrics.max_f1(scores, labels)
    assert f1 == pytest.approx(6 / 7)
    assert threshold == pytest.approx(0.6)


def test_accuracy_and_v_measure():
    assert metrics.accuracy(["a", "b", "b"], ["a", "b", "a"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        metrics.accuracy([], [])
    assert metrics.v_measure([1, 1, 0, 0], ["a", "a", "b", "b"]) == pytest.approx(1.0)  # label names do not matter
    # gold a a b b, clusters 0 0 0 1, entropies in bits
    h = lambda *p: -sum(x * math.log2(x) for x in p if x)  # noqa: E731
    homogeneity = 1 - (3 / 4) * h(2 / 3, 1 / 3) / h(1 / 2, 1 / 2)
    completeness = 1 - (1 / 2) * h(1 / 2, 1 / 2) / h(3 / 4, 1 / 4)
    expected = 2 * homogeneity * completeness / (homogeneity + completeness)
    assert metrics.v_measure([0, 0, 0, 1], ["a", "a", "b", "b"]) == pytest.approx(expected)
    assert expected == pytest.approx(0.3437, abs=1e-4)


def test_qa_exact_match_and_f1():
    assert metrics.exact_match("The Eiffel Tower!", ["eiffel tower"]) == 1.0
    assert metrics.exact_match("Paris", ["London", "paris."]) == 1.0
    assert metrics.exact_match("in Paris", ["Paris"]) == 0.0
    # "big red dog" vs "red dog barks": 2 common tokens, precision = recall = 2/3
    assert metrics.token_f1("the big red dog", ["red dog barks"]) == pytest.approx(2 / 3)
    assert metrics.token_f1("cat", ["dog", "cat"]) == 1.0
    assert metrics.token_f1("cat", ["dog"]) == 0.0


def test_last_number():
    assert metrics.last_number("3 apples cost $1,234.50, so 7") == 7.0
    assert metrics.last_number("The answer is $1,234.") == 1234.0
    assert metrics.last_number("she owes -3 dollars") == -3.0
    assert metrics.last_number("no digits here") is None


def test_pass_at_k():
    assert metrics.pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert metrics.pass_at_k(5, 5, 1) == 1.0
    assert metrics.pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)  # 1 - C(3,2)/C(4,2)


def test_wilson_interval_matches_scipy_and_stays_in_range():
    from scipy.stats import binomtest

    reference = binomtest(29, 100).proportion_ci(method="wilson")
    assert metrics.wilson_interval(29, 100) == pytest.approx((reference.low, reference.high), abs=1e-5)
    assert metrics.wilson_interval(0, 20)[0] == 0.0 and 0.0 < metrics.wilson_interval(0, 20)[1] < 0.2
    with pytest.raises(ValueError):
        metrics.wilson_interval(0, 0)


def test_bootstrap_perplexity_interval_brackets_the_estimate():
    nlls, tokens = [10.0, 30.0, 20.0, 5.0, 40.0], [10, 10, 10, 10, 10]
    low, high = metrics.bootstrap_perplexity_interval(nlls, tokens)
    assert low < math.exp(sum(nlls) / sum(tokens)) < high
    assert metrics.bootstrap_perplexity_interval([10.0] * 5, tokens) == pytest.approx((math.e, math.e))
