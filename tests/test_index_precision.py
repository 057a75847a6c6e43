"""Index precision: int8 and binary faiss codes, rescored with the float32 vectors kept in SQLite."""

from __future__ import annotations

import json
import sqlite3

import faiss
import pytest
from typer.testing import CliRunner

from gritkit.cli import app
from gritkit.rag import Index
from gritkit.rag.index import embed_chunks

FACTS = [
    "Paris is the capital and largest city of France.",
    "Tokyo is the capital of Japan and its most populous city.",
    "Canberra was chosen as the capital of Australia as a compromise between Sydney and Melbourne.",
    "The cheetah is the fastest land animal, reaching speeds of about 110 km/h.",
    "Emperor penguins breed during the Antarctic winter and the males incubate the eggs.",
    "Honey bees communicate the direction of flowers with a waggle dance.",
    "Photosynthesis turns carbon dioxide and water into glucose using light energy.",
    "Mitochondria produce most of a cell's ATP through oxidative phosphorylation.",
    "DNA is a double helix of two strands held together by base pairs.",
    "The Pacific is the largest and deepest of the Earth's oceans.",
    "Mount Everest, at 8,849 metres, is the highest mountain above sea level.",
    "The Sahara is the largest hot desert in the world.",
    "A marathon is a long-distance running race of 42.195 kilometres.",
    "In chess, a pawn that reaches the last rank is promoted, usually to a queen.",
    "Basketball was invented by James Naismith in 1891 in Springfield, Massachusetts.",
    "The violin is a string instrument played with a bow.",
    "Johann Sebastian Bach composed the Brandenburg Concertos.",
    "Jazz originated in the African-American communities of New Orleans.",
    "Python is a programming language known for its readable syntax and indentation.",
    "A hash table maps keys to values using a hash function to pick a bucket.",
    "TCP provides reliable, ordered delivery of a stream of bytes between programs.",
    "Sourdough bread is leavened by a culture of wild yeast and lactic acid bacteria.",
    "Espresso is made by forcing hot water through finely ground coffee under pressure.",
    "Sushi combines vinegared rice with raw fish or vegetables.",
    "The Great Wall of China was built over centuries to protect against northern invasions.",
    "The French Revolution began in 1789 with the storming of the Bastille.",
    "The Roman Empire was ruled by emperors, starting with Augustus.",
    "Jupiter is the largest planet in the Solar System.",
    "A light-year is the distance light travels in one year, about 9.46 trillion kilometres.",
    "Black holes are regions where gravity is so strong that not even light escapes.",
    "Insulin is a hormone that lets cells take up glucose from the blood.",
    "Vaccines train the immune system to recognise a pathogen without causing the disease.",
]
DOCS = [{"id": f"fact{number}", "text": text} for number, text in enumerate(FACTS)]
QUESTIONS = {  # question -> the fact that answers it
    "What is the capital of Japan?": "fact1",
    "Which land animal runs fastest?": "fact3",
    "How long is a marathon race?": "fact12",
    "Who invented basketball?": "fact14",
    "How is espresso coffee made?": "fact22",
    "What is the biggest planet?": "fact27",
    "What hormone controls blood sugar uptake?": "fact30",
}


@pytest.fixture(scope="module")
def indexes(default_model, tmp_path_factory):
    """The same documents in a float32, an int8 and a binary index (exact search)."""
    folder = tmp_path_factory.mktemp("precision")
    opened = {precision: Index.open(folder / precision, default_model, precision=precision)
              for precision in ("float32", "int8", "binary")}
    embedded = embed_chunks(default_model, [(doc["id"], doc["text"], {}) for doc in DOCS])
    for index in opened.values():  # the same vectors in each
        index.add_embedded(embedded)
    yield opened
    for index in opened.values():
        index.close()


def test_compact_indexes_with_rescoring_find_what_float32_finds(indexes, default_model):
    for question, answer in QUESTIONS.items():
        query = default_model.encode(question, instruction=indexes["float32"].query_instruction)
        exact = indexes["float32"].search(query, k=3)
        assert exact[0].doc_id == answer, question
        for precision in ("int8", "binary"):
            rescored = indexes[precision].search(query, k=3)
            assert rescored[0].doc_id == answer, (precision, question)
            # rescored scores are the exact cosines of the float32 index
            assert rescored[0].score == pytest.approx(exact[0].score, abs=1e-5)
        assert indexes["int8"].search(query, k=1, rescore_multiplier=0)[0].doc_id == answer


def test_compact_scores_without_rescoring_estimate_the_cosine(indexes, default_model):
    query = default_model.encode("Who invented basketball?", instruction=indexes["float32"].query_instruction)
    exact = indexes["float32"].search(query, k=1)[0].score
    int8 = indexes["int8"].search(query, k=1, rescore_multiplier=0)[0]
    binary = indexes["binary"].search(query, k=len(FACTS), rescore_multiplier=0)
    assert int8.score == pytest.approx(exact, abs=0.02)
    assert all(-1 <= passage.score <= 1 for passage in binary)
    assert [p.score for p in binary] == sorted((p.score for p in binary), reverse=True)
    with pytest.raises(ValueError, match="rescore_multiplier"):
        indexes["int8"].search(query, k=1, rescore_multiplier=-1)


def test_compact_codes_are_what_faiss_stores_and_take_less_room(indexes):
    kinds = {precision: index.stats()["search"] for precision, index in indexes.items()}
    assert kinds == {"float32": "exact (faiss IndexFlatIP)", "int8": "exact (faiss IndexScalarQuantizer)",
                     "binary": "exact (faiss IndexBinaryFlat)"}
    sizes = {precision: index.stats()["vector_index_bytes"] for precision, index in indexes.items()}
    assert sizes["binary"] < sizes["int8"] < sizes["float32"]
    assert all(index.stats()["precision"] == precision for precision, index in indexes.items())


def test_precision_is_recorded_and_checked_on_open(default_model, tmp_path):
    Index.open(tmp_path / "index", default_model, precision="binary").add(DOCS[:3])
    reopened = Index.open(tmp_path / "index", default_model)  # none given: the recorded one
    assert reopened.precision == "binary" and isinstance(reopened.vectors, faiss.IndexBinaryIDMap)
    assert reopened.search("What is the capital of Japan?", k=1)[0].doc_id == "fact1"
    reopened.close()
    with pytest.raises(ValueError, match="holds binary vectors, not int8"):
        Index.open(tmp_path / "index", default_model, precision="int8")
    with pytest.raises(ValueError, match="precision must be one of float32, int8, binary"):
        Index.open(tmp_path / "new", default_model, precision="fp16")
    assert not (tmp_path / "new").exists()  # a bad value writes nothing
    # an index from before precisions were recorded holds float32 vectors
    Index.open(tmp_path / "old", default_model).add(DOCS[:3])
    with sqlite3.connect(tmp_path / "old" / "index.sqlite") as db:
        db.execute("DELETE FROM settings WHERE key = 'precision'")
    with pytest.raises(ValueError, match="holds float32 vectors, not int8"):
        Index.open(tmp_path / "old", default_model, precision="int8")
    assert Index.open(tmp_path / "old", default_model).precision == "float32"


def test_int8_built_one_document_at_a_time_refits_its_ranges(default_model, tmp_path):
    """The quantizer's first ranges come from one vector; refitting as the index grows keeps the
    compact ranking (no rescoring) right."""
    index = Index.open(tmp_path / "index", default_model, precision="int8")
    index.add(DOCS, batch_size=1)
    for question, answer in QUESTIONS.items():
        assert index.search(question, k=1, rescore_multiplier=0)[0].doc_id == answer, question
    index.close()


@pytest.mark.parametrize("precision", ["int8", "binary"])
def test_hnsw_with_a_compact_precision_matches_exact_search_of_that_precision(tiny_model, tmp_path, precision):
    model = tiny_model("llama")
    docs = [{"id": f"d{i}", "text": f"document {i} about {['cats', 'lava', 'stocks', 'rivers'][i % 4]} {i * 7}"}
            for i in range(40)]
    queries = [model.encode(f"{topic} {n}") for topic in ("cats", "lava", "rivers") for n in (3, 11)]
    exact = Index.open(tmp_path / "exact", model, precision=precision)
    hnsw = Index.open(tmp_path / "hnsw", model, precision=precision, search="hnsw")
    for index in (exact, hnsw):
        index.add(docs)
        index.delete(["d4"])  # an HNSW graph is rebuilt after a removal
    assert hnsw.stats()["search"].startswith(f"hnsw (faiss {'IndexHNSWSQ' if precision == 'int8' else 'IndexBinaryHNSW'}")
    for query in queries:  # a graph this small is searched exhaustively: the same passages
        assert [p.id for p in hnsw.search(query, k=5)] == [p.id for p in exact.search(query, k=5)]
        # without rescoring, the same scores (binary: Hamming distances tie, in any order)
        assert ([p.score for p in hnsw.search(query, k=5, rescore_multiplier=0)]
                == pytest.approx([p.score for p in exact.search(query, k=5, rescore_multiplier=0)]))
    hnsw.close()
    reopened = Index.open(tmp_path / "hnsw", model)
    assert reopened.search_kind == "hnsw" and reopened.precision == precision and reopened.vectors.ntotal == 39


def test_cli_precision_option_and_ask_on_a_binary_index(default_model, tmp_path):
    runner = CliRunner()
    rows = tmp_path / "docs.jsonl"
    rows.write_text("".join(json.dumps(d) + "\n" for d in DOCS[:8]))
    index_dir = str(tmp_path / "index")

    result = runner.invoke(app, ["index", "add", str(rows), "--index", index_dir, "--precision", "fp16"])
    assert result.exit_code == 2 and "precision must be one of" in result.output
    result = runner.invoke(app, ["index", "add", str(rows), "--index", index_dir, "--precision", "binary"])
    assert result.exit_code == 0, result.output
    stats = json.loads(runner.invoke(app, ["index", "stats", "--index", index_dir]).stdout)
    assert stats["precision"] == "binary" and stats["vectors"] == 8
    result = runner.invoke(app, ["index", "add", str(rows), "--index", index_dir, "--precision", "int8"])
    assert result.exit_code == 2 and "holds binary vectors, not int8" in result.output
    result = runner.invoke(app, ["index", "search", "Which land animal runs fastest?", "--index", index_dir,
                                 "-k", "1", "--json", "--rescore-multiplier", "2"])
    assert result.exit_code == 0 and json.loads(result.stdout)["doc_id"] == "fact3"
    result = runner.invoke(app, ["ask", "What is the capital of Japan?", "--index", index_dir, "-k", "1",
                                 "--max-new-tokens", "4", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["passages"][0]["id"] == "fact1#0"  # ask (and serve) use the recorded one


def test_ray_build_checks_precision_before_any_work(default_model, tmp_path):
    pytest.importorskip("ray")
    from gritkit.rag.build import build_index

    Index.open(tmp_path / "index", default_model, precision="int8").add(DOCS[:2])
    with pytest.raises(ValueError, match="precision must be one of"):
        build_index([tmp_path / "missing.jsonl"], tmp_path / "index", precision="half")
    with pytest.raises(ValueError, match="holds int8 vectors, not binary"):
        build_index([tmp_path / "missing.jsonl"], tmp_path / "index", precision="binary")
