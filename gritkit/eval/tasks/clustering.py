"""Clustering: mini-batch k-means on the embeddings, with k = the number of gold labels.

Data: (text, label) rows, as for classification; for 20 Newsgroups the subject lines are
clustered (as in MTEB's TwentyNewsgroupsClustering). Metric: V-measure.
"""

from __future__ import annotations

from pathlib import Path

from gritkit.eval import metrics
from gritkit.eval.data import subset
from gritkit.eval.encoders import Encoder
from gritkit.results import Score
from gritkit.eval.tasks.classification import load_labelled


def evaluate(encoder: Encoder, path: str | Path, *, instruction: str = "", limit: int | None = None,
             text_field: str | None = None, seed: int = 0) -> Score:
    from sklearn.cluster import MiniBatchKMeans

    examples = subset(load_labelled(path, text_field), limit)
    labels = [label for _, label in examples]
    vectors = encoder.encode([text for text, _ in examples], instruction, show_progress_bar=True)
    clusters = len(set(labels))
    predicted = MiniBatchKMeans(n_clusters=clusters, batch_size=500, n_init="auto", random_state=seed).fit_predict(vectors)
    return Score("v_measure", metrics.v_measure(predicted.tolist(), labels), len(examples), {"clusters": clusters})
