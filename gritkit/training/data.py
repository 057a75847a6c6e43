"""Training data: JSONL readers that validate every line, a resumable batch order, and collation.

Embedding rows (one source per file; a row's ``"source"`` key overrides the file name):

* official gritlm layout: ``{"query": str | [instruction, text], "pos": [str | [instruction, text], ...], "neg": [...]}``
* friendly layout: ``{"query": str, "positive": str | [str], "negatives": [str],
  "query_instruction": str, "doc_instruction": str}``

Generative rows: ``{"messages": [{"role", "content"}, ...]}``, ``{"prompt", "completion"}`` (one user
turn and the assistant's reply) or ``{"text"}`` (plain language modelling, every token trained).

RAG rows (cache-aware stream): ``{"question": str, "passages": [str, ...], "answer": str}``, the
passage that holds the answer first, the others distractors.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gritkit.model import GritLM

Text = tuple[str, str]  # (instruction, text); the instruction is attended to but not pooled
IGNORE_INDEX = -100     # label of tokens that are not trained (prompt, padding)
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """One or more malformed training rows; the message lists ``file:line: what is wrong``."""


@dataclass
class EmbeddingExample:
    query: Text
    positives: list[Text]
    negatives: list[Text]
    source: str
    group: str | None = None  # e.g. a class label: same-group pairs are not used as each other's negatives
    score: float | None = None  # graded similarity of query and positive (e.g. STS 0-5): trained with CoSENT


@dataclass
class RagExample:
    question: str
    passages: list[str]  # gold first
    answer: str
    gold_answer: str | None = None  # the gold span, when ``answer`` is a self-target


@dataclass
class GenerativeExample:
    messages: list[dict[str, str]] | None = None  # chat; assistant turns are trained
    text: str | None = None                       # plain text; every token is trained


# ---------------------------------------------------------------- reading + validation

def data_files(paths: Sequence[str | Path]) -> list[Path]:
    """Expand folders to the ``*.jsonl`` / ``*.jsonl.gz`` files inside them (sorted)."""
    files: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            found = sorted([*entry.glob("*.jsonl"), *entry.glob("*.jsonl.gz")])
            if not found:
                raise DataError(f"{entry}: folder has no .jsonl files")
            files.extend(found)
        elif entry.is_file():
            files.append(entry)
        else:
            raise DataError(f"{entry}: no such file or folder")
    return files


def _rows(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if line.strip():
                yield number, line


def _read(paths: Sequence[str | Path], parse) -> list:
    """Parse every row of every file; collect errors so one run reports them all (up to 20)."""
    examples, errors = [], []
    for path in data_files(paths):
        for number, line in _rows(path):
            try:
                row = json.loads(line)
                if not isinstance(row, dict):
                    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
                examples.append(parse(row, path))
            except ValueError as error:  # json.JSONDecodeError is a ValueError
                errors.append(f"{path}:{number}: {error}")
                if len(errors) == 20:
                    break
    if errors:
        raise DataError("malformed training data:\n" + "\n".join(errors))
    return examples


def _text(value, what: str, instruction: str = "") -> Text:
    """A str (with the default instruction) or an official ``[instruction, text]`` pair."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        instruction, value = value
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string or [instruction, text], got {json.dumps(value)[:60]}")
    if not value.strip():
        raise ValueError(f"{what} is empty")
    return instruction, value


def _texts(value, what: str, instruction: str, required: bool) -> list[Text]:
    if value is None:
        value = []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ValueError(f"{what} must be a string or a list, got {json.dumps(value)[:60]}")
    if required and not value:
        raise ValueError(f"{what} is empty: every query needs a positive")
    return [_text(item, f"{what}[{i}]", instruction) for i, item in enumerate(value)]


def parse_embedding_row(row: dict, path: Path) -> EmbeddingExample:
    if "query" not in row:
        raise ValueError("missing 'query'")
    source = row.get("source") or path.name.split(".")[0]
    group = row.get("group")
    if group is not None and not isinstance(group, str):
        raise ValueError("'group' must be a string (e.g. the class label) when given")
    score = row.get("score")
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise ValueError(f"'score' must be a number (graded similarity) when given, got {json.dumps(score)[:60]}")
    if "pos" in row:  # official gritlm layout
        query = _text(row["query"], "query")
        return EmbeddingExample(query, _texts(row["pos"], "pos", "", True), _texts(row.get("neg"), "neg", "", False),
                                source, group, score)
    if "positive" not in row:
        raise ValueError("missing 'pos' (gritlm layout) or 'positive' (friendly layout)")
    for key in ("query_instruction", "doc_instruction"):
        if not isinstance(row.get(key, ""), str):
            raise ValueError(f"{key} must be a string")
    doc_instruction = row.get("doc_instruction", "")
    query = _text(row["query"], "query", row.get("query_instruction", ""))
    return EmbeddingExample(query, _texts(row["positive"], "positive", doc_instruction, True),
                            _texts(row.get("negatives"), "negatives", doc_instruction, False), source, group, score)


def parse_generative_row(row: dict, path: Path) -> GenerativeExample:
    if "messages" in row:
        messages = row["messages"]
        if not isinstance(messages, list) or not messages:
            raise ValueError("'messages' must be a non-empty list")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ROLES or not isinstance(message.get("content"), str):
                raise ValueError(f"messages[{index}] must be {{'role': one of {ROLES}, 'content': str}}")
        if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
            raise ValueError("no assistant turn with content: nothing to train on")
        return GenerativeExample(messages=[{"role": m["role"], "content": m["content"]} for m in messages])
    if "prompt" in row or "completion" in row:
        prompt, completion = row.get("prompt"), row.get("completion")
        if not isinstance(prompt, str) or not isinstance(completion, str) or not prompt.strip() or not completion.strip():
            raise ValueError("'prompt' and 'completion' must both be non-empty strings")
        return GenerativeExample(messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}])
    if "text" in row:
        if not isinstance(row["text"], str) or not row["text"].strip():
            raise ValueError("'text' must be a non-empty string")
        return GenerativeExample(text=row["text"])
    raise ValueError("expected 'messages', 'prompt'+'completion' or 'text'")


def parse_rag_row(row: dict, path: Path) -> RagExample:
    for key in ("question", "answer"):
        if not isinstance(row.get(key), str) or not row[key].strip():
            raise ValueError(f"'{key}' must be a non-empty string")
    passages = row.get("passages")
    if not isinstance(passages, list) or not passages or not all(isinstance(p, str) and p.strip() for p in passages):
        raise ValueError("'passages' must be a non-empty list of non-empty strings (the gold passage first)")
    gold = row.get("gold_answer")
    return RagExample(row["question"].strip(), [p.strip() for p in passages], row["answer"].strip(),
                      gold.strip() if isinstance(gold, str) and gold.strip() else None)


def read_rag_data(paths: Sequence[str | Path]) -> list[RagExample]:
    examples = _read(paths, parse_rag_row)
    if not examples:
        raise DataError(f"no RAG examples in {', '.join(map(str, paths))}")
    return examples


def read_embedding_data(paths: Sequence[str | Path]) -> dict[str, list[EmbeddingExample]]:
    """All embedding examples, grouped by source (so a batch can come from one source).

    A source is either scored (every row has ``score``: CoSENT on its pairs) or not (InfoNCE).
    """
    by_source: dict[str, list[EmbeddingExample]] = {}
    for example in _read(paths, parse_embedding_row):
        by_source.setdefault(example.source, []).append(example)
    if not by_source:
        raise DataError(f"no embedding examples in {', '.join(map(str, paths))}")
    for source, examples in by_source.items():
        scored = sum(example.score is not None for example in examples)
        if 0 < scored < len(examples):
            raise DataError(f"source {source!r}: {scored} of {len(examples)} rows have a 'score'; a source is "
                            "either graded pairs (every row scored, CoSENT) or contrastive rows (none, InfoNCE)")
    return by_source


def read_generative_data(paths: Sequence[str | Path]) -> list[GenerativeExample]:
    examples = _read(paths, parse_generative_row)
    if not examples:
        raise DataError(f"no generative examples in {', '.join(map(str, paths))}")
    return examples


# ---------------------------------------------------------------- batch order

class BatchPlan:
    """A deterministic, endless order of global batches: batch ``step`` depends only on (seed, step).

    Each epoch shuffles every group, cuts it into full batches (the rest waits for the next epoch's
    shuffle) and shuffles the batch order, so a batch holds one group (source) only. Resuming at a
    step therefore needs nothing but the step number.
    """

    def __init__(self, group_sizes: dict[str, int], batch_size: int, seed: int):
        self.group_sizes = {name: size for name, size in group_sizes.items() if size >= batch_size}
        if not self.group_sizes:
            raise DataError(f"every source has fewer than {batch_size} examples (global batch size); "
                            f"sizes: {group_sizes}")
        self.skipped = sorted(set(group_sizes) - set(self.group_sizes))
        self.batch_size, self.seed = batch_size, seed
        self.batches_per_epoch = sum(size // batch_size for size in self.group_sizes.values())
        self._epoch: tuple[int, list[tuple[str, list[int]]]] | None = None

    def _batches(self, epoch: int) -> list[tuple[str, list[int]]]:
        if self._epoch is None or self._epoch[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            batches = []
            for name in sorted(self.group_sizes):
                order = rng.permutation(self.group_sizes[name]).tolist()
                batches += [(name, order[i:i + self.batch_size])
                            for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]
            self._epoch = (epoch, [batches[i] for i in rng.permutation(len(batches))])
        return self._epoch[1]

    def batch(self, step: int) -> tuple[str, list[int]]:
        """(group name, example indices within the group) of global batch ``step`` (0-based)."""
        epoch, position = divmod(step, self.batches_per_epoch)
        return self._batches(epoch)[position]


def local_slice(items: list, rank: int, world_size: int) -> list:
    """This process's share of a global batch."""
    share = len(items) // world_size
    return items[rank * share:(rank + 1) * share]


# ---------------------------------------------------------------- embedding groups

def passage_group(example: EmbeddingExample, source_examples: list[EmbeddingExample], num_negatives: int,
                  rng: np.random.Generator) -> list[Text]:
    """One positive then ``num_negatives`` negatives: hard ones first, else random same-source passages.

    The group size is fixed so processes can gather equal-shaped passage tensors.
    """
    positive = example.positives[rng.integers(len(example.positives))]
    hard = example.negatives
    if len(hard) >= num_negatives:
        negatives = [hard[i] for i in rng.choice(len(hard), num_negatives, replace=False)]
    elif hard:
        negatives = [hard[i] for i in rng.choice(len(hard), num_negatives, replace=True)]
    else:
        negatives = []
        while len(negatives) < num_negatives:
            other = source_examples[rng.integers(len(source_examples))]
            if other is not example or len(source_examples) == 1:
                negatives.append(other.positives[0])
    return [positive, *negatives]


# ---------------------------------------------------------------- generative tokenisation

def reply_text(grit: GritLM, messages: list[dict[str, str]]) -> str:
    """The assistant's last turn as the chat template renders it after the generation prompt (end marker included)."""
    return _render(grit, messages)[len(grit.chat_prompt(messages[:-1])):]


def _render(grit: GritLM, messages: list[dict[str, str]]) -> str:
    """A finished conversation as text (no generation prompt after it)."""
    if grit.tokenizer.chat_template:
        return grit.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    # GRIT's own format: chat_prompt always ends by opening the next assistant turn; drop that opening.
    return grit.chat_prompt(messages).removesuffix("<|assistant|>\n")


def tokenize_generative(grit: GritLM, example: GenerativeExample, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids and labels; labels are IGNORE_INDEX on everything but assistant turns (or all of a text)."""
    tokenizer = grit.tokenizer
    if example.text is not None:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
        return ids[:max_length], ids[:max_length]
    ids: list[int] = []
    labels: list[int] = []
    done = ""  # conversation text covered so far
    messages = example.messages
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        # The prompt is what generate() would see; the reply is the rest of the rendered conversation.
        prompt = grit.chat_prompt(messages[:index])
        full = _render(grit, messages[:index + 1])
        if not prompt.startswith(done) or not full.startswith(prompt):
            raise DataError("the chat template does not render conversations as prefixes of each other")
        prompt_ids = tokenizer(prompt[len(done):], add_special_tokens=False)["input_ids"]
        reply_ids = tokenizer(full[len(prompt):], add_special_tokens=False)["input_ids"]
        ids += prompt_ids + reply_ids
        labels += [IGNORE_INDEX] * len(prompt_ids) + reply_ids
        done = full
    return _fit(ids, labels, max_length)


def _fit(ids: list[int], labels: list[int], max_length: int) -> tuple[list[int], list[int]]:
    """Cut an over-long sequence on the right, unless that leaves the reply little room: then the
    prompt loses its start instead, so at least half the window holds trained tokens when possible."""
    if len(ids) <= max_length:
        return ids, labels
    first_trained = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    start = max(0, min(first_trained - max_length // 2, len(ids) - max_length))
    return ids[start:start + max_length], labels[start:start + max_length]


def collate_generative(rows: list[tuple[list[int], list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row; padding is neither attended to nor trained."""
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, (ids, row_labels) in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids)
        labels[row, :len(ids)] = torch.tensor(row_labels)
        attention_mask[row, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
