"""A persistent GRIT index: chunked documents, their embeddings, and optionally their key/value caches.

Layout of an index directory::

    index.sqlite      documents, chunks (text + float32 vector) and settings: the source of truth
    vectors.faiss     faiss index over chunk ids: IndexFlatIP (exact inner product, the default) or,
                      with ``search="hnsw"``, an HNSW graph (approximate, for large indexes); with
                      ``precision="int8"`` or ``"binary"`` it holds compact codes instead of float32
    kv/               KVStore of per-chunk key/value segments (optional, ``cache_kv=...``)

Two kinds of key/value states can be kept per chunk (``settings.kv_kinds`` records which):
``"bidirectional"``, the states of the embedding pass itself (``<|embed|>\n{chunk}``, attention as
the model embeds), and ``"causal"``, the chunk run causally in the doc-first chat layout after the
chat preamble (``gritkit.prompts.doc_first_layout``), from which doc-cached answers equal uncached
doc-first RAG. Either way the embedding comes from the embedding pass.

Every batch of documents is committed in one SQLite transaction (WAL, synchronous=FULL), so a
document is either fully in the index or not at all. The faiss file is derived data: it is written
atomically (temporary file + ``os.replace``) after each ``add``/``delete`` and, when opened, checked
against the chunk ids in SQLite and rebuilt from the stored vectors if they differ (e.g. after a
``kill -9`` in the middle of ``add``).

The settings record which model made the vectors: its fingerprint (weights and quantisation),
attention and pooling. Opening, adding to or answering from the index with a model that embeds
differently raises :class:`StaleIndexError` (re-embed with ``Index.open(path, model, rebuild=True)``
or ``gritkit index rebuild``); key/value segments are keyed by chunk, kind and fingerprint.

The ``precision`` setting (fixed when the index is created) chooses what faiss searches: float32
vectors, int8 codes (faiss scalar quantizer, per-dimension min/max ranges fitted on the stored vectors
as sentence-transformers' int8 calibration does) or sign bits (Hamming distance). SQLite keeps the
float32 vectors either way, so a compact search takes ``rescore_multiplier * k`` candidates and
rescores them exactly.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np
from tqdm.auto import tqdm

from gritkit.model import Attention, GritLM, Precision, compact_embeddings
from gritkit.prompts import RAG_QUERY_INSTRUCTION, doc_first_piece, user_turn_parts
from gritkit.rag.kv import Segment, causal_segment
from gritkit.rag.kvstore import KVStore

ChunkUnit = Literal["tokens", "chars"]
KVKind = Literal["bidirectional", "causal"]
KV_KINDS: tuple[str, ...] = ("bidirectional", "causal")
SearchKind = Literal["exact", "hnsw"]
# HNSW graph degree and beam widths: recall@10 and latency at these are in docs/rag.md
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 64
PRECISIONS: tuple[str, ...] = ("float32", "int8", "binary")
# candidates per result taken from int8/binary codes before exact rescoring: recall in docs/rag.md
DEFAULT_RESCORE_MULTIPLIER = 4
QUERY_INSTRUCTION = RAG_QUERY_INSTRUCTION
DEFAULT_KV_BUDGET = 4 * 1024**3

_SCHEMA = """
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS documents (id TEXT PRIMARY KEY, metadata TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id TEXT NOT NULL REFERENCES documents(id),
    position INTEGER NOT NULL,
    text TEXT NOT NULL,
    tokens INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_by_doc ON chunks(doc_id);
"""


class StaleIndexError(ValueError):
    """The index's vectors (or cached key/value states) were made by a model that embeds differently."""


# What a model must share with the one that built an index for its vectors to be comparable.
IDENTITY_KEYS = ("fingerprint", "attention", "pooling")


def model_identity(model: GritLM) -> dict[str, str]:
    """The settings an index records about the model that embeds into it."""
    return {"fingerprint": model.fingerprint, "attention": model.attention, "pooling": model.pooling}


@dataclass
class Passage:
    """One retrieved chunk: ``id`` is ``"<doc_id>#<position>"``; ``score`` is the cosine similarity."""

    id: str
    doc_id: str
    text: str
    score: float
    chunk_id: int
    metadata: dict[str, Any] = field(default_factory=dict)


def _record_model(db: sqlite3.Connection, model: GritLM) -> None:
    settings = {"dim": str(model.embedding_dim), "model": model.name, **model_identity(model)}
    db.executemany("INSERT OR REPLACE INTO settings VALUES (?, ?)", list(settings.items()))


def _record_precision(db: sqlite3.Connection, path: Path, precision: Precision | None) -> None:
    """Record ``precision`` in a new index, or check it against the one an index recorded."""
    row = db.execute("SELECT value FROM settings WHERE key = 'precision'").fetchone()
    if row is None:  # a new index, or one from before precisions (float32 then)
        has_chunks = db.execute("SELECT 1 FROM chunks LIMIT 1").fetchone() is not None
        recorded = "float32" if has_chunks else precision or "float32"
        db.execute("INSERT INTO settings VALUES ('precision', ?)", (recorded,))
    else:
        recorded = row[0]
    if precision is not None and precision != recorded:
        raise ValueError(f"{path} holds {recorded} vectors, not {precision}: open it with precision={recorded!r} "
                         f"or none (the recorded one); for {precision}, add the documents to a new index")


def _short(value: str | None) -> str:
    return "none" if value is None else value[:12] if len(value) == 64 else repr(value)


def check_chunking(size: int, overlap: int, unit: str) -> None:
    """Raise ``ValueError`` unless ``size >= 1``, ``0 <= overlap < size`` and ``unit`` is tokens or chars."""
    if size < 1 or not 0 <= overlap < size:
        raise ValueError(f"need chunk size >= 1 and 0 <= overlap < size, got size={size}, overlap={overlap}")
    if unit not in ("tokens", "chars"):
        raise ValueError(f"chunk unit must be 'tokens' or 'chars', not {unit!r}")


def chunk_text(text: str, tokenizer, size: int = 256, overlap: int = 32, unit: ChunkUnit = "tokens") -> list[str]:
    """Split ``text`` into windows of ``size`` tokens (or characters) that overlap by ``overlap``.

    Token windows are cut at the tokenizer's character offsets, so chunks are exact substrings.
    """
    check_chunking(size, overlap, unit)
    if unit == "chars":
        starts = range(0, max(len(text) - overlap, 1), size - overlap)
        return [text[start:start + size] for start in starts]
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    if len(offsets) <= size:
        return [text]
    chunks = []
    for start in range(0, len(offsets) - overlap, size - overlap):
        window = offsets[start:start + size]
        begin = 0 if start == 0 else window[0][0]
        end = len(text) if start + size >= len(offsets) else offsets[start + size][0]
        chunks.append(text[begin:end])
    return chunks


def _check_documents(documents: Sequence[dict]) -> list[tuple[str, str, dict]]:
    checked, seen = [], set()
    for position, document in enumerate(documents):
        if not isinstance(document, dict) or "id" not in document or "text" not in document:
            raise TypeError(f"documents[{position}] must be a dict with 'id' and 'text'")
        doc_id, text = str(document["id"]), document["text"]
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"document {doc_id!r} has no text")
        if doc_id in seen:
            raise ValueError(f"document id {doc_id!r} appears twice in one add")
        seen.add(doc_id)
        checked.append((doc_id, text, {k: v for k, v in document.items() if k not in ("id", "text")}))
    return checked


def kv_kinds_of(cache_kv: bool | str | Sequence[str] | None) -> tuple[str, ...]:
    """The KV kinds an ``Index.add(cache_kv=...)`` value asks for: ``True`` is ``"bidirectional"``,
    ``False``/``None`` none, ``"both"`` or a sequence of kinds several."""
    if cache_kv is None or cache_kv is False:
        return ()
    if cache_kv is True:
        return ("bidirectional",)
    kinds = KV_KINDS if cache_kv == "both" else (cache_kv,) if isinstance(cache_kv, str) else tuple(cache_kv)
    for kind in kinds:
        if kind not in KV_KINDS:
            raise ValueError(f"cache_kv must be True, False, 'both' or one of {', '.join(KV_KINDS)}, not {kind!r}")
    return tuple(kind for kind in KV_KINDS if kind in kinds)


def chat_token_ids(tokenizer, text: str) -> list[int]:
    """Token ids of one piece of a chat prompt (special tokens written in the text, none added)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def causal_passage_segment(model: GritLM, text: str) -> Segment:
    """The ``"causal"`` KV kind of one chunk: its doc-first piece run after the chat preamble.

    Preamble and piece are tokenised apart (uncached doc-first RAG tokenises the same pieces), and
    the preamble's states are left out: causal, so the same for every chunk (RAG adds them once).
    """
    preamble, _ = user_turn_parts(model.tokenizer)
    return causal_segment(model, chat_token_ids(model.tokenizer, preamble),
                          chat_token_ids(model.tokenizer, doc_first_piece(text)))


@dataclass
class EmbeddedChunks:
    """A batch of documents chunked and embedded, ready to be written (``Index.add_embedded``).

    ``chunks`` holds ``(doc_id, position, text, tokens)``; ``vectors`` one row per chunk; ``segments``
    ``(chunk row, attention kind, key/value segment)`` for the chunks whose caches are kept.
    """

    documents: list[tuple[str, dict]]
    chunks: list[tuple[str, int, str, int]]
    vectors: np.ndarray
    segments: list[tuple[int, str, Segment]] = field(default_factory=list)
    kinds: tuple[str, ...] = ()  # the KV kinds asked for (recorded even when computed on demand)


def embed_chunks(model: GritLM, documents: Sequence[tuple[str, str, dict]], *, chunk_size: int = 256,
                 chunk_overlap: int = 32, chunk_unit: ChunkUnit = "tokens",
                 cache_kv: bool | str | Sequence[str] | None = False, kv_on_demand: bool = False) -> EmbeddedChunks:
    """Chunk and embed ``(doc_id, text, metadata)`` documents, with the KV kinds ``cache_kv`` asks for
    (none now with ``kv_on_demand``): the computing half of ``Index.add``, also run by the workers of
    ``gritkit.rag.build``."""
    kinds = kv_kinds_of(cache_kv)
    pieces = [(doc_id, position, piece) for doc_id, text, _ in documents
              for position, piece in enumerate(chunk_text(text, model.tokenizer, chunk_size, chunk_overlap, chunk_unit))]
    texts = [piece for _, _, piece in pieces]
    segments: list[tuple[int, str, Segment]] = []  # (chunk row, kind, segment)
    if "bidirectional" in kinds and not kv_on_demand:  # one text per pass, so no padding enters a cache
        vectors = []
        for row, text in enumerate(texts):
            vector, cache, token_ids = model.embed_with_cache(text)
            vectors.append(vector)
            segments.append((row, "bidirectional", Segment.from_cache(cache, len(token_ids))))
        vectors = np.stack(vectors) if vectors else np.zeros((0, model.embedding_dim), dtype=np.float32)
    else:
        vectors = model.encode(texts)
    if "causal" in kinds and not kv_on_demand:
        segments += [(row, "causal", causal_passage_segment(model, text)) for row, text in enumerate(texts)]
    token_counts = [len(ids) for ids in model.tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    chunks = [(doc_id, position, text, tokens) for (doc_id, position, text), tokens in zip(pieces, token_counts)]
    return EmbeddedChunks([(doc_id, metadata) for doc_id, _, metadata in documents], chunks,
                          np.asarray(vectors, dtype=np.float32).reshape(len(chunks), -1), segments, kinds)


VectorIndex = faiss.IndexIDMap | faiss.IndexBinaryIDMap


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")


def new_vector_index(kind: SearchKind, dim: int, precision: Precision = "float32") -> VectorIndex:
    """An empty faiss index over chunk ids, exact or an HNSW graph, of float32 vectors (inner
    product), int8 codes (``QT_8bit`` scalar quantizer, inner product; trained before the first add)
    or packed sign bits (Hamming distance; ``ceil(dim / 8)`` bytes)."""
    if kind not in ("exact", "hnsw"):
        raise ValueError(f"search must be 'exact' or 'hnsw', not {kind!r}")
    check_precision(precision)
    if precision == "binary":
        bits = 8 * -(-dim // 8)
        if kind == "exact":
            return faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits))
        graph = faiss.IndexBinaryHNSW(bits, HNSW_M)
    elif kind == "exact":
        flat = (faiss.IndexFlatIP(dim) if precision == "float32" else
                faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT))
        return faiss.IndexIDMap(flat)
    elif precision == "float32":
        graph = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    else:
        graph = faiss.IndexHNSWSQ(dim, faiss.ScalarQuantizer.QT_8bit, HNSW_M, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction, graph.hnsw.efSearch = HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH
    return faiss.IndexBinaryIDMap2(graph) if precision == "binary" else faiss.IndexIDMap2(graph)


def vector_index_kind(vectors: VectorIndex) -> str:
    """The faiss class inside an index from :func:`new_vector_index`, e.g. ``"IndexScalarQuantizer"``."""
    binary = isinstance(vectors, faiss.IndexBinaryIDMap)
    return type(faiss.downcast_IndexBinary(vectors.index) if binary else faiss.downcast_index(vectors.index)).__name__


class Index:
    """Documents chunked, embedded with a GritLM and searched by cosine similarity; persistent on disk.

    Example::

        index = Index.open("./myindex", model)              # created if missing
        index.add([{"id": "d1", "text": "..."}], cache_kv="causal")   # or "bidirectional" (True), "both"
        passages = index.search("a question", k=5)
    """

    def __init__(self, path: Path, model: GritLM | None, db: sqlite3.Connection, kv: KVStore,
                 query_instruction: str):
        self.path, self.model, self.db, self.kv = path, model, db, kv
        self.query_instruction = query_instruction
        self._vectors_stale = False  # an HNSW graph cannot drop entries: rebuilt after removals
        self._trained_on = 0  # int8: how many vectors the quantizer's ranges were fitted on
        self._seen_version = self._data_version()
        self.vectors: VectorIndex = self._load_vectors()

    @classmethod
    def open(cls, path: str | os.PathLike, model: GritLM | None = None, *, query_instruction: str = QUERY_INSTRUCTION,
             kv_budget_bytes: int | None = DEFAULT_KV_BUDGET, rebuild: bool = False,
             search: SearchKind | None = None, precision: Precision | None = None) -> Index:
        """Open the index at ``path``, creating it if missing. Without a model only delete, stats and
        search by vector work.

        A ``model`` that embeds differently from the one that built the index (another fingerprint,
        attention or pooling) raises :class:`StaleIndexError`; ``rebuild=True`` re-embeds every stored
        chunk with it instead (one transaction) and drops the cached key/value states. ``search``
        ("exact" or "hnsw") is stored with the index; changing it rebuilds the vector index from the
        stored vectors. ``precision`` ("float32", "int8" or "binary": what faiss searches, see
        :meth:`search`) is fixed when the index is created; ``None`` uses the recorded one, another
        value raises ``ValueError``.
        """
        if search is not None:
            new_vector_index(search, 1)  # a bad kind fails before anything is written
        if precision is not None:
            check_precision(precision)
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path / "index.sqlite", isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        try:
            _record_precision(db, path, precision)
        except ValueError:
            db.close()
            raise
        if search is not None:
            db.execute("INSERT OR REPLACE INTO settings VALUES ('search', ?)", (search,))
        if model is not None and not db.execute("SELECT 1 FROM settings WHERE key = 'dim'").fetchone():
            _record_model(db, model)
        index = cls(path, model, db, KVStore(path / "kv", kv_budget_bytes), query_instruction)
        if model is not None:
            try:
                index.check_model(model)
            except StaleIndexError:
                if not rebuild:
                    index.close()
                    raise
                index._reembed(model)
        index._drop_orphan_kv()
        return index

    def settings(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM settings"))

    def check_model(self, model: GritLM) -> None:
        """Raise :class:`StaleIndexError` unless ``model`` embeds the way the index's vectors were made."""
        settings = self.settings()
        if "dim" not in settings:
            return  # empty and never written: any model may start it
        rebuild = (f"Use the model it was built with, or re-embed the index with this one: gritkit index "
                   f"rebuild --index {self.path} --model {model.name or 'SPEC'} "
                   "(Python: Index.open(path, model, rebuild=True))")
        built_with = f"{self.path} was built with model {settings.get('model')!r}"
        if "fingerprint" not in settings:
            raise StaleIndexError(f"{built_with} before gritkit recorded model fingerprints, so which weights made "
                                  f"its vectors is unknown. {rebuild}")
        if int(settings["dim"]) != model.embedding_dim:
            raise StaleIndexError(f"{built_with}, which embeds in {settings['dim']}-d vectors; {model.name!r} "
                                  f"embeds in {model.embedding_dim} dimensions. {rebuild}")
        theirs, ours = {k: settings.get(k) for k in IDENTITY_KEYS}, model_identity(model)
        if theirs != ours:
            differences = ", ".join(f"{key} {_short(theirs[key])} vs {_short(ours[key])}"
                                    for key in IDENTITY_KEYS if theirs[key] != ours[key])
            raise StaleIndexError(f"{built_with}; {model.name!r} embeds differently ({differences}), so its "
                                  f"queries would not match the stored vectors. {rebuild}")

    def _reembed(self, model: GritLM, batch_size: int = 32) -> None:
        """Embed every stored chunk again with ``model``, in one transaction; cached key/value states go."""
        rows = self.db.execute("SELECT id, text FROM chunks ORDER BY id").fetchall()
        texts = [text for _, text in rows]
        vectors = model.encode(texts, batch_size=batch_size) if texts else []
        token_ids = model.tokenizer(texts, add_special_tokens=False)["input_ids"] if texts else []
        token_counts = [len(ids) for ids in token_ids]
        with self._transaction():
            self.db.executemany("UPDATE chunks SET vector = ?, tokens = ? WHERE id = ?",
                                [(np.asarray(vector, dtype=np.float32).tobytes(), tokens, chunk_id)
                                 for (chunk_id, _), vector, tokens in zip(rows, vectors, token_counts)])
            self.db.execute("DELETE FROM settings WHERE key NOT IN ('search', 'precision')")
            _record_model(self.db, model)
        self.kv.delete(self.kv.keys())
        self._rebuild_vectors()

    @property
    def dim(self) -> int | None:
        row = self.db.execute("SELECT value FROM settings WHERE key = 'dim'").fetchone()
        return int(row[0]) if row else None

    @property
    def fingerprint(self) -> str | None:
        """The fingerprint of the model that made the vectors (``GritLM.fingerprint``)."""
        row = self.db.execute("SELECT value FROM settings WHERE key = 'fingerprint'").fetchone()
        return row[0] if row else None

    @property
    def search_kind(self) -> SearchKind:
        row = self.db.execute("SELECT value FROM settings WHERE key = 'search'").fetchone()
        return row[0] if row else "exact"

    @property
    def precision(self) -> Precision:
        """What faiss searches: ``"float32"`` vectors, ``"int8"`` codes or ``"binary"`` sign bits."""
        row = self.db.execute("SELECT value FROM settings WHERE key = 'precision'").fetchone()
        return row[0] if row else "float32"

    @property
    def model_name(self) -> str | None:
        row = self.db.execute("SELECT value FROM settings WHERE key = 'model'").fetchone()
        return row[0] if row else None

    @property
    def kv_kinds(self) -> tuple[str, ...]:
        """The KV kinds this index holds (``"bidirectional"``, ``"causal"``): those any ``add`` stored.

        Entries of a held kind that are missing (evicted by the budget, or documents added without
        a cache) are computed again when asked for; a kind the index does not hold never is.
        """
        row = self.db.execute("SELECT value FROM settings WHERE key = 'kv_kinds'").fetchone()
        if row:
            return tuple(json.loads(row[0]))
        # An index written before kinds were recorded held only embedding-pass states.
        return ("bidirectional",) if len(self.kv) else ()

    def _record_kv_kinds(self, kinds: Sequence[str]) -> None:
        """Add ``kinds`` to the recorded set (inside the add's transaction)."""
        held = set(self.kv_kinds) | set(kinds)
        self.db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('kv_kinds', ?)",
                        (json.dumps([kind for kind in KV_KINDS if kind in held]),))

    # ------------------------------------------------------------ faiss, derived from SQLite

    def _data_version(self) -> int:
        """SQLite's count of commits made to the file by other connections (other processes included)."""
        return self.db.execute("PRAGMA data_version").fetchone()[0]

    def _sync(self) -> None:
        """Reload the vectors when another connection has written to the index since this one read it:
        searching with the old ones would return chunks it has replaced or deleted."""
        version = self._data_version()
        if version != self._seen_version:
            self._seen_version = version
            self._vectors_stale = False
            self.vectors = self._load_vectors()  # rebuilt from SQLite if the other writer's file lags behind

    def _faiss_path(self) -> Path:
        return self.path / "vectors.faiss"

    def _chunk_ids(self) -> np.ndarray:
        return np.array([row[0] for row in self.db.execute("SELECT id FROM chunks ORDER BY id")], dtype=np.int64)

    def _load_vectors(self) -> VectorIndex:
        expected = self._chunk_ids()
        if self._faiss_path().exists():
            try:
                read = faiss.read_index_binary if self.precision == "binary" else faiss.read_index
                vectors = read(str(self._faiss_path()))
                stored = np.sort(faiss.vector_to_array(vectors.id_map))
                wanted = new_vector_index(self.search_kind, self.dim or 1, self.precision)
                if (np.array_equal(stored, expected) and (self.dim is None or vectors.d == wanted.d)
                        and vector_index_kind(vectors) == vector_index_kind(wanted)):
                    self._trained_on = vectors.ntotal
                    return vectors
            except RuntimeError:  # unreadable file, or of the other precision: rebuilt below
                pass
        return self._rebuild_vectors()

    def _rebuild_vectors(self) -> VectorIndex:
        vectors = new_vector_index(self.search_kind, self.dim or 1, self.precision)
        self._vectors_stale = False
        rows = self.db.execute("SELECT id, vector FROM chunks ORDER BY id").fetchall()
        if rows:
            floats = np.stack([np.frombuffer(row[1], dtype=np.float32) for row in rows])
            if self.precision == "int8":  # per-dimension ranges from every stored vector
                vectors.train(floats)
                self._trained_on = len(floats)
            vectors.add_with_ids(self._codes(floats), np.array([row[0] for row in rows], dtype=np.int64))
        self.vectors = vectors
        self._save_vectors()
        return vectors

    def _codes(self, vectors: np.ndarray) -> np.ndarray:
        """What the faiss index takes for float32 vectors: themselves (int8: faiss quantizes), or sign bits."""
        return compact_embeddings(vectors, precision="binary") if self.precision == "binary" else vectors

    def _ranges_outgrown(self, adding: int) -> bool:
        """int8 ranges fitted on fewer than half the vectors (say the first few documents) would clip
        later ones: they are fitted again on all (a rebuild) each time the index doubles."""
        return self.precision == "int8" and self.vectors.ntotal + adding > 2 * self._trained_on

    def _save_vectors(self) -> None:
        temporary = self._faiss_path().with_suffix(f".faiss.{os.getpid()}.{id(self)}.tmp")  # one per writer
        write = faiss.write_index_binary if self.precision == "binary" else faiss.write_index
        write(self.vectors, str(temporary))
        with open(temporary, "rb") as file:
            os.fsync(file.fileno())
        os.replace(temporary, self._faiss_path())

    # ------------------------------------------------------------ writing

    def _require_model(self) -> GritLM:
        if self.model is None:
            raise ValueError("this index was opened without a model; pass one to Index.open to embed text")
        return self.model

    def add(
        self,
        documents: Iterable[dict],
        *,
        chunk_size: int = 256,
        chunk_overlap: int = 32,
        chunk_unit: ChunkUnit = "tokens",
        batch_size: int = 16,
        cache_kv: bool | KVKind | Literal["both"] | Sequence[KVKind] = False,
        kv_on_demand: bool = False,
        show_progress_bar: bool = False,
    ) -> int:
        """Chunk, embed and store documents (dicts with ``id``, ``text`` and any metadata keys).

        Re-adding an id replaces that document. Each batch of ``batch_size`` documents is one
        transaction. ``cache_kv`` keeps key/value states of each chunk for RAG caching:
        ``"bidirectional"`` (or ``True``) those of the embedding pass, ``"causal"`` those of the
        chunk in the doc-first chat layout (doc-cached answers then equal uncached doc-first RAG;
        one more causal pass per chunk), ``"both"`` both. With ``kv_on_demand`` the index records
        the kinds but computes a chunk's states only when an answer first needs them (for a large
        corpus of which few chunks are ever retrieved). Returns the number of chunks written.
        """
        self._require_model()
        kinds = kv_kinds_of(cache_kv)
        checked = _check_documents(list(documents))
        check_chunking(chunk_size, chunk_overlap, chunk_unit)
        written = 0
        with tqdm(total=len(checked), desc="index add", unit="doc", disable=not show_progress_bar) as bar:
            for start in range(0, len(checked), batch_size):
                batch = checked[start:start + batch_size]
                written += self._add_batch(batch, chunk_size, chunk_overlap, chunk_unit, kinds, kv_on_demand)
                bar.update(len(batch))
        self._save_vectors()
        return written

    def _add_batch(self, batch, chunk_size, chunk_overlap, chunk_unit, kinds, kv_on_demand) -> int:
        embedded = embed_chunks(self._require_model(), batch, chunk_size=chunk_size, chunk_overlap=chunk_overlap,
                                chunk_unit=chunk_unit, cache_kv=kinds, kv_on_demand=kv_on_demand)
        return self.add_embedded(embedded, save_vectors=False)

    def add_embedded(self, embedded: EmbeddedChunks, *, save_vectors: bool = True) -> int:
        """Write documents chunked and embedded elsewhere (``embed_chunks``, e.g. on Ray workers) in one
        transaction, replacing any with the same ids; returns the number of chunks written."""
        if self.dim is not None and len(embedded.chunks) and embedded.vectors.shape[1] != self.dim:
            raise ValueError(f"vectors have {embedded.vectors.shape[1]} dimensions, the index {self.dim}")
        self._sync()
        with self._transaction():
            old_ids = self._delete_chunks([doc_id for doc_id, _ in embedded.documents])
            if embedded.kinds:
                self._record_kv_kinds(embedded.kinds)
            self.db.executemany("INSERT OR REPLACE INTO documents (id, metadata) VALUES (?, ?)",
                                [(doc_id, json.dumps(metadata)) for doc_id, metadata in embedded.documents])
            new_ids = []
            for (doc_id, position, text, tokens), vector in zip(embedded.chunks, embedded.vectors):
                cursor = self.db.execute(
                    "INSERT INTO chunks (doc_id, position, text, tokens, vector) VALUES (?, ?, ?, ?, ?)",
                    (doc_id, position, text, tokens, np.asarray(vector, dtype=np.float32).tobytes()))
                new_ids.append(cursor.lastrowid)
        self._forget_chunks(old_ids)
        if self._vectors_stale or (new_ids and self._ranges_outgrown(len(new_ids))):
            self._rebuild_vectors()  # from SQLite, which holds the new chunks already
        elif new_ids:
            self.vectors.add_with_ids(self._codes(embedded.vectors), np.array(new_ids, dtype=np.int64))
        attention = self.model.attention if self.model is not None else "bidirectional"
        for row, kind, segment in embedded.segments:
            self.kv.put(self._kv_key(new_ids[row], kind, attention), segment)
        if save_vectors:
            self._save_vectors()
        return len(new_ids)

    @contextlib.contextmanager
    def _transaction(self):
        """One SQLite write transaction: committed whole or rolled back (SQLite is the source of truth)."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def _delete_chunks(self, doc_ids: Sequence[str]) -> list[int]:
        """Delete the documents' chunk rows (inside a transaction); returns their ids."""
        marks = ",".join("?" * len(doc_ids))
        old_ids = [row[0] for row in self.db.execute(f"SELECT id FROM chunks WHERE doc_id IN ({marks})", doc_ids)]
        self.db.execute(f"DELETE FROM chunks WHERE doc_id IN ({marks})", doc_ids)
        return old_ids

    def _forget_chunks(self, chunk_ids: list[int]) -> None:
        """Drop committed-away chunks from the vector index and the KV store."""
        if not chunk_ids:
            return
        if self.search_kind == "hnsw":
            self._vectors_stale = True
        else:
            self.vectors.remove_ids(np.array(chunk_ids, dtype=np.int64))
        # every kind of state these chunks can hold (other fingerprints never get in: check_model)
        self.kv.delete([self._kv_key(i, kind, attention) for i in chunk_ids
                        for kind, attention in (("bidirectional", "bidirectional"), ("bidirectional", "causal"),
                                                ("causal", "bidirectional"))])

    def delete(self, doc_ids: Sequence[str]) -> int:
        """Remove documents (and their chunks and caches); returns how many existed."""
        doc_ids = [str(doc_id) for doc_id in doc_ids]
        if not doc_ids:
            return 0
        self._sync()
        with self._transaction():
            old_ids = self._delete_chunks(doc_ids)
            marks = ",".join("?" * len(doc_ids))
            removed = self.db.execute(f"DELETE FROM documents WHERE id IN ({marks})", doc_ids).rowcount
        self._forget_chunks(old_ids)
        if self._vectors_stale:
            self._rebuild_vectors()
        else:
            self._save_vectors()
        return removed

    # ------------------------------------------------------------ reading

    def search(self, query: str | np.ndarray, k: int = 5, *,
               rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER) -> list[Passage]:
        """The ``k`` chunks closest to a query text (embedded with ``query_instruction``) or vector.

        In an int8 or binary index, the ``rescore_multiplier * k`` best by the compact codes (the
        float query against int8 codes, or Hamming distance between sign bits) are rescored with the
        stored float32 vectors, so scores are exact cosines. ``rescore_multiplier=0`` returns the
        compact ranking with its own scores: the inner product with the decoded int8 codes, or
        ``1 - 2 * hamming / bits`` for binary (both estimate the cosine).
        """
        if k < 1:
            raise ValueError("k must be >= 1")
        if rescore_multiplier < 0:
            raise ValueError("rescore_multiplier must be >= 0 (0: no rescoring)")
        if isinstance(query, str):
            query = self._require_model().encode(query, instruction=self.query_instruction)
        query = np.asarray(query, dtype=np.float32).reshape(1, -1)
        self._sync()
        if self.vectors.ntotal == 0:
            return []
        if query.shape[1] != self.dim:
            raise ValueError(f"query vector has {query.shape[1]} dimensions, the index {self.dim}")
        compact = self.precision != "float32"
        scores, ids = self.vectors.search(self._codes(query), k * max(rescore_multiplier, 1) if compact else k)
        if self.precision == "binary":
            scores = 1 - 2 * scores / self.vectors.d
        hits = [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]
        if compact and rescore_multiplier:
            hits = self._rescore(query[0], [chunk_id for chunk_id, _ in hits])
        return [self._passage(chunk_id, score) for chunk_id, score in hits[:k]]

    def _rescore(self, query: np.ndarray, chunk_ids: list[int]) -> list[tuple[int, float]]:
        """``(chunk id, exact inner product)`` of candidates by their stored float32 vectors, best first."""
        marks = ",".join("?" * len(chunk_ids))
        rows = self.db.execute(f"SELECT id, vector FROM chunks WHERE id IN ({marks})", chunk_ids).fetchall()
        scores = np.stack([np.frombuffer(vector, dtype=np.float32) for _, vector in rows]) @ query
        return [(rows[i][0], float(scores[i])) for i in np.argsort(-scores, kind="stable")]

    def _passage(self, chunk_id: int, score: float) -> Passage:
        doc_id, position, text, metadata = self.db.execute(
            "SELECT c.doc_id, c.position, c.text, d.metadata FROM chunks c JOIN documents d ON d.id = c.doc_id "
            "WHERE c.id = ?", (chunk_id,)).fetchone()
        return Passage(f"{doc_id}#{position}", doc_id, text, score, chunk_id, json.loads(metadata))

    def document_ids(self) -> list[str]:
        return [row[0] for row in self.db.execute("SELECT id FROM documents ORDER BY rowid")]

    def __len__(self) -> int:
        return self.db.execute("SELECT COUNT(*) FROM documents").fetchone()[0]

    def __contains__(self, doc_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM documents WHERE id = ?", (str(doc_id),)).fetchone() is not None

    def stats(self) -> dict[str, Any]:
        documents, = self.db.execute("SELECT COUNT(*) FROM documents").fetchone()
        chunks, tokens = self.db.execute("SELECT COUNT(*), COALESCE(SUM(tokens), 0) FROM chunks").fetchone()
        kv = self.kv.stats()
        return {"path": str(self.path), "model": self.model_name, "dim": self.dim,
                "fingerprint": self.fingerprint, "documents": documents,
                "chunks": chunks, "tokens": tokens, "vectors": self.vectors.ntotal,
                "search": f"exact (faiss {vector_index_kind(self.vectors)})" if self.search_kind == "exact" else
                          f"hnsw (faiss {vector_index_kind(self.vectors)}, M={HNSW_M}, efSearch={HNSW_EF_SEARCH})",
                "precision": self.precision, "vector_index_bytes": self._faiss_path().stat().st_size,
                "kv_kinds": list(self.kv_kinds),
                "kv_entries": kv["entries"], "kv_bytes": kv["bytes"], "kv_bytes_per_token": kv["bytes_per_token"],
                "kv_budget_bytes": kv["budget_bytes"]}

    # ------------------------------------------------------------ key/value caches

    def _kv_key(self, chunk_id: int, kind: str, attention: Attention) -> str:
        """Segments are keyed by chunk, kind and the fingerprint of the model that computed them;
        embedding-pass states by the attention they ran with."""
        label = "chat" if kind == "causal" else attention
        return f"{chunk_id}-{label}-{(self.fingerprint or 'none')[:16]}"

    def _drop_orphan_kv(self) -> None:
        live = {str(i) for i in self._chunk_ids()}
        self.kv.delete([key for key in self.kv.keys() if key.split("-")[0] not in live])

    def kv_segment(self, passage: Passage, model: GritLM | None = None, *, kind: KVKind = "bidirectional",
                   attention: Attention | None = None) -> tuple[Segment, bool]:
        """A passage's key/value segment of ``kind``: from the store, else computed (with ``model``,
        default the index's) and stored. Returns the segment and whether it was computed now.
        """
        if kind not in KV_KINDS:
            raise ValueError(f"KV kind must be one of {', '.join(KV_KINDS)}, not {kind!r}")
        model = model or self._require_model()
        self.check_model(model)  # another model's states would be silently wrong
        attention = attention or model.attention
        key = self._kv_key(passage.chunk_id, kind, attention)
        segment = self.kv.get(key)
        if segment is not None:
            return segment, False
        if kind == "causal":
            segment = causal_passage_segment(model, passage.text)
        else:
            _, cache, token_ids = model.embed_with_cache(passage.text, attention=attention)
            segment = Segment.from_cache(cache, len(token_ids))
        self.kv.put(key, segment)
        return segment, True

    def close(self) -> None:
        self.kv.close()
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
