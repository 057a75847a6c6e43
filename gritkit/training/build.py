"""``gritkit data build``: turn the shared data sets into a GRIT training mix (train splits only).

Embedding sources (one file each, one instruction each, friendly layout):
medquad (question -> answer), twentynewsgroups train (subject -> body), tydiqa_goldp train
(question -> passage), wikiqa train (question -> correct sentence; wrong ones are hard negatives),
flickr8k_captions (caption <-> caption of the same image), banking77 train (query <-> same-intent query),
nli_cad_triplets (premise <-> entailed hypothesis, the contradiction as hard negative), stsb train
(sentence <-> sentence scored >= 4; in-domain for the STS-B evaluation, reported as such), stsb_scored (every
STS-B train pair with its 0-5 score, trained with CoSENT; in-domain too) and QQP duplicate
questions parsed from t0_train_50k's glue_qqp templates. Symmetric sources give half their rows the
instruction on both sides and half none, so the model embeds well without an instruction too.
Generative sources (chat ``messages``): t0_train_50k, flan_cot, gsm8k train, selfinstruct_seed.
RAG sources (``rag/<source>.jsonl``: question, passages with the gold one first, answer), for the
cache-aware stream: tydiqa_goldp English train (gold paragraph cut to a window around the answer,
a paragraph of another article as a distractor) and AdversarialQA questions parsed from t0_train_50k
(SQuAD-style Wikipedia paragraphs; any paragraph that is also in squad_v1_dev is dropped); opt-in, Quoref
questions likewise and ``reading``: locate-and-copy questions over all those paragraphs (what follows a
phrase, or the sentence holding it).

No row comes from an evaluation split; where a train split repeats a text of its test split
(banking77 queries, 20 Newsgroups subjects, WikiQA and GSM8K questions) that train row is dropped too.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from gritkit.paths import data_dir

INSTRUCTIONS = {
    "medquad": ("Given a medical question, retrieve a passage that answers it", ""),
    "twentynewsgroups": ("Given the subject line of a newsgroup post, retrieve the post", ""),
    "tydiqa": ("Given a question, retrieve a Wikipedia passage that answers it", ""),
    "wikiqa": ("Given a question, retrieve the Wikipedia sentence that answers it", ""),
    # symmetric tasks: both sides carry the same instruction, as in GritLM's training data
    "flickr8k": ("Given an image caption, retrieve a caption of the same image",) * 2,
    "banking77": ("Given an online banking query, retrieve a query with the same intent",) * 2,
    "nli": ("Retrieve semantically similar text",) * 2,
    "stsb": ("Retrieve semantically similar text",) * 2,
    "stsb_scored": ("Retrieve semantically similar text",) * 2,
    "qqp": ("Given a question, retrieve questions that are semantically equivalent",) * 2,
}
SYMMETRIC_SOURCES = ("flickr8k", "banking77", "nli", "stsb", "stsb_scored", "qqp")
RAG_PASSAGE_MAX_CHARS = 800  # about 200 tokens: the window around the answer kept of a long paragraph
# P3 templates whose source data sets are evaluation sets elsewhere (MRPC, ...), per t0_train_50k/SOURCE.txt.
T0_EXCLUDED_TEMPLATE_PREFIXES = ("glue_mrpc", "paws", "imdb", "ag_news", "dbpedia_14")


def _jsonl(path: Path) -> Iterator[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as file:
        for line in file:
            if line.strip():
                yield json.loads(line)


def _normal(text: str) -> str:
    return " ".join(re.sub(r"^(re:\s*)+", "", text.strip(), flags=re.I).lower().split())


def _eval_texts(path: Path, key: str) -> set[str]:
    """Normalised texts of an evaluation split, read only to keep its duplicates out of training."""
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as file:
            return {_normal(row[key]) for row in csv.DictReader(file)}
    return {_normal(row[key]) for row in _jsonl(path)}


def _pair(source: str, query: str, positive: str, negatives: list[str] | None = None,
          rng: random.Random | None = None) -> dict:
    query_instruction, doc_instruction = INSTRUCTIONS[source]
    if source in SYMMETRIC_SOURCES and rng is not None and rng.random() < 0.5:
        query_instruction = doc_instruction = ""  # half the symmetric pairs carry no instruction
    return {"source": source, "query": query.strip(), "positive": positive.strip(),
            "negatives": [n.strip() for n in negatives or [] if n.strip()],
            "query_instruction": query_instruction, "doc_instruction": doc_instruction}


def _chat(user: str, assistant: str) -> dict:
    return {"messages": [{"role": "user", "content": user.strip()}, {"role": "assistant", "content": assistant.strip()}]}


# ---------------------------------------------------------------- embedding sources

def medquad(root: Path, rng: random.Random) -> list[dict]:
    rows = [r for r in _jsonl(root / "medquad" / "medquad_qa.jsonl.gz") if r["question"].strip() and r["answer"].strip()]
    by_focus = defaultdict(list)
    for row in rows:
        by_focus[row["focus"]].append(row["answer"])
    pairs = []
    for row in rows:  # other answers about the same focus are hard negatives (SOURCE.txt)
        others = [a for a in by_focus[row["focus"]] if a != row["answer"]]
        pairs.append(_pair("medquad", row["question"], row["answer"], rng.sample(others, min(1, len(others)))))
    return pairs


def twentynewsgroups(root: Path, rng: random.Random) -> list[dict]:
    pairs, seen = [], _eval_texts(root / "twentynewsgroups" / "test.jsonl.gz", "subject")
    for row in _jsonl(root / "twentynewsgroups" / "train.jsonl.gz"):
        subject = re.sub(r"^(re:\s*)+", "", row["subject"].strip(), flags=re.I)
        body = row["text"].split("\n\n", 1)[-1].strip()  # drop the mail headers (they repeat the subject)
        # one post per subject: replies share it and would be false in-batch negatives
        if len(subject) < 8 or len(body) < 40 or _normal(subject) in seen:
            continue
        seen.add(_normal(subject))
        pairs.append(_pair("twentynewsgroups", subject, body))
    return pairs


def tydiqa(root: Path, rng: random.Random) -> list[dict]:
    data = json.loads((root / "tydiqa_goldp" / "train" / "tydiqa.goldp.en.train.json").read_text())
    return [_pair("tydiqa", qa["question"], paragraph["context"])
            for article in data["data"] for paragraph in article["paragraphs"] for qa in paragraph["qas"]]


def wikiqa(root: Path, rng: random.Random) -> list[dict]:
    questions: dict[str, dict] = {}
    held_out = _eval_texts(root / "wikiqa" / "test.jsonl", "question") | _eval_texts(root / "wikiqa" / "dev.jsonl", "question")
    for row in _jsonl(root / "wikiqa" / "train.jsonl"):
        if _normal(row["question"]) in held_out:
            continue
        entry = questions.setdefault(row["qid"], {"question": row["question"], "pos": [], "neg": []})
        entry["pos" if int(row["label"]) == 1 else "neg"].append(row["sentence"])
    return [{**_pair("wikiqa", q["question"], q["pos"][0], q["neg"]), "positive": q["pos"]}
            for q in questions.values() if q["pos"]]


def flickr8k(root: Path, rng: random.Random) -> list[dict]:
    pairs = []
    for row in _jsonl(root / "flickr8k_captions" / "flickr8k_caption_groups.jsonl"):
        captions = [c for c in row["captions"] if c.strip()]
        if len(captions) >= 2:
            query, positive = rng.sample(captions, 2)
            pairs.append(_pair("flickr8k", query, positive, rng=rng))
    return pairs


def banking77(root: Path, rng: random.Random) -> list[dict]:
    with open(root / "banking77" / "train.csv", newline="", encoding="utf-8") as file:
        held_out = _eval_texts(root / "banking77" / "test.csv", "text")
        by_intent = defaultdict(list)
        for row in csv.DictReader(file):
            if _normal(row["text"]) not in held_out:
                by_intent[row["category"]].append(row["text"])
    intents = sorted(by_intent)
    pairs = []
    for intent in intents:
        texts = by_intent[intent]
        for text in texts:
            positive = rng.choice([t for t in texts if t != text] or texts)
            negative = rng.choice(by_intent[rng.choice([i for i in intents if i != intent])])
            pairs.append({**_pair("banking77", text, positive, [negative], rng=rng), "group": intent})
    return pairs


def nli(root: Path, rng: random.Random) -> list[dict]:
    return [_pair("nli", row["anchor"], row["positive"], [row["negative"]], rng=rng)
            for row in _jsonl(root / "nli_cad_triplets" / "train_triplets.jsonl")
            if row["anchor"].strip() and row["positive"].strip()]


def _stsb_train(root: Path) -> list[list[str]]:
    """STS-B train rows (sentence1, sentence2, score) less the 17 that repeat 12 of its test pairs."""
    def rows(split: str) -> list[list[str]]:
        with open(root / "stsb" / f"stsb-en-{split}.csv", newline="", encoding="utf-8") as file:
            return [row for row in csv.reader(file) if len(row) == 3]

    held_out = {pair for first, second, _ in rows("test") for pair in ((first, second), (second, first))}
    return [row for row in rows("train") if (row[0], row[1]) not in held_out]


def stsb_scored(root: Path, rng: random.Random) -> list[dict]:
    """Every STS-B train pair with its 0-5 score (graded pairs: CoSENT); in-domain for STS-B."""
    return [{**_pair("stsb_scored", first, second, rng=rng), "score": float(score)}
            for first, second, score in _stsb_train(root) if first.strip() and second.strip()]


def stsb(root: Path, rng: random.Random) -> list[dict]:
    pairs = []
    for first, second, score in _stsb_train(root):
        if float(score) >= 4.0:
            query, positive = (first, second) if rng.random() < 0.5 else (second, first)
            pairs.append(_pair("stsb", query, positive, rng=rng))
    return pairs


QQP_PATTERNS = (re.compile(r"^Question 1: (.+)\nQuestion 2: (.+)\n\nDo these two questions convey the same meaning"),
                re.compile(r'^Are the questions "(.+)" and "(.+)" asking the same thing\?'),
                re.compile(r'^I received the questions "(.+)" and "(.+)"\. Are they duplicates\?'))


def qqp(root: Path, rng: random.Random) -> list[dict]:
    pairs, seen = [], set()
    for row in _jsonl(root / "t0_train_50k" / "t0_train_50k.jsonl.gz"):
        answer = row["completion"].replace("<|endoftext|>", "").strip().lower()
        if not row["template"].startswith("glue_qqp") or answer not in ("yes", "duplicates"):
            continue
        for pattern in QQP_PATTERNS:
            if (match := pattern.match(row["prompt"])) and _normal(match[1]) not in seen:
                seen.add(_normal(match[1]))
                pairs.append(_pair("qqp", match[1], match[2], rng=rng))
    return pairs


# ---------------------------------------------------------------- generative sources

def t0(root: Path, rng: random.Random) -> list[dict]:
    return [_chat(row["prompt"], row["completion"].replace("<|endoftext|>", ""))
            for row in _jsonl(root / "t0_train_50k" / "t0_train_50k.jsonl.gz")
            if not row["template"].startswith(T0_EXCLUDED_TEMPLATE_PREFIXES)
            and row["completion"].replace("<|endoftext|>", "").strip()]


def flan_cot(root: Path, rng: random.Random) -> list[dict]:
    # its gsm8k task repeats gsm8k/train.jsonl, which is its own source below
    return [_chat(row["question"], f"{row['rationale'].strip()}\nSo the answer is {row['answer'].strip()}.")
            for row in _jsonl(root / "flan_cot" / "flan_cot_train.jsonl") if row["task"] != "gsm8k"]


def selfinstruct(root: Path, rng: random.Random) -> list[dict]:
    """Self-Instruct's 175 human-written seed tasks: the instruction (and its first input) -> its output."""
    rows = []
    for task in _jsonl(root / "selfinstruct_seed" / "seed_tasks.jsonl"):
        instance = task["instances"][0]
        prompt = task["instruction"].strip() + (f"\n\n{instance['input'].strip()}" if instance["input"].strip() else "")
        if instance["output"].strip():
            rows.append(_chat(prompt, instance["output"].strip()))
    return rows


def gsm8k(root: Path, rng: random.Random) -> list[dict]:
    # drop the calculator annotations "<<48/2=24>>" that only the original tool-using setup needs
    held_out = _eval_texts(root / "gsm8k" / "test.jsonl", "question")
    return [_chat(row["question"], re.sub(r"<<[^>]*>>", "", row["answer"])) for row in _jsonl(root / "gsm8k" / "train.jsonl")
            if _normal(row["question"]) not in held_out]


# ---------------------------------------------------------------- RAG sources

def _answer_window(context: str, answer_start: int, answer: str, rng: random.Random) -> str:
    """A window of at most RAG_PASSAGE_MAX_CHARS around the answer, cut at word boundaries."""
    if len(context) <= RAG_PASSAGE_MAX_CHARS:
        return context
    room = RAG_PASSAGE_MAX_CHARS - len(answer)
    start = max(0, min(answer_start - rng.randint(0, room), len(context) - RAG_PASSAGE_MAX_CHARS))
    end = start + RAG_PASSAGE_MAX_CHARS
    if start:
        start = context.find(" ", start, answer_start) + 1 or start
    if end < len(context):
        end = context.rfind(" ", answer_start + len(answer), end) if " " in context[answer_start + len(answer):end] else end
    return context[start:end].strip()


def tydiqa_rag(root: Path, rng: random.Random) -> list[dict]:
    data = json.loads((root / "tydiqa_goldp" / "train" / "tydiqa.goldp.en.train.json").read_text())
    paragraphs = [(number, paragraph) for number, article in enumerate(data["data"]) for paragraph in article["paragraphs"]]
    rows = []
    for article, paragraph in paragraphs:
        for qa in paragraph["qas"]:
            answer = qa["answers"][0]
            if not answer["text"].strip() or len(answer["text"]) > 100:  # long spans are not short answers
                continue
            gold = _answer_window(paragraph["context"], answer["answer_start"], answer["text"], rng)
            if answer["text"] not in gold:
                continue
            other_article, other = rng.choice(paragraphs)
            while other_article == article:
                other_article, other = rng.choice(paragraphs)
            distractor = _answer_window(other["context"], 0, "", rng)
            rows.append({"question": qa["question"].strip(), "passages": [gold, distractor], "answer": answer["text"].strip()})
    return rows


# (question, context) as written by t0_train_50k's extractive QA templates (by template name); the answer is the completion
ADVERSARIAL_QA_PATTERNS = {
    "based_on": re.compile(r"Extract the answer to the question from the following context\.\nQuestion: (?P<q>.+?)\n"
                           r"Context: (?P<c>.+)", re.S),
    "question_context_answer": re.compile(r'Question: "(?P<q>.+?)"\n\nContext: "(?P<c>.+)"\n\nAnswer:', re.S),
    "answer_the_following_q": re.compile(r'Given the following passage\n\n"(?P<c>.+)",\n\nanswer the following question\. '
                                         r"Note that the answer is present within the text\.\n\nQuestion: (?P<q>.+)", re.S),
    "tell_what_it_is": re.compile(r'I know that the answer to the question "(?P<q>.+?)" is in "(?P<c>.+)"\. '
                                  r"Can you tell me what it is\?", re.S),
}
QUOREF_PATTERNS = {
    "Answer_Friend_Question": re.compile(r"A friend asked me to answer this question: (?P<q>.+?), using the article: "
                                         r"(?P<c>.+), what would be the answer \?", re.S),
    "Answer_Question_Given_Context": re.compile(r"Given the following context:\n\n(?P<c>.+)\n\nanswer the following "
                                                r"question:\n\n(?P<q>.+)", re.S),
    "Answer_Test": re.compile(r"I have a test where I am given the following article, what is an answer for the "
                              r"question: (?P<q>.+?) \?\n\n(?P<c>.+)", re.S),
    "Context_Contains_Answer": re.compile(r"This article: (?P<c>.+) contains an answer for the question: (?P<q>.+?), "
                                          r"what is it \?", re.S),
    "Find_Answer": re.compile(r"The following article contains an answer for the question: (?P<q>.+?) , can you please "
                              r"find it\? \n\n(?P<c>.+)", re.S),
    "Found_Context_Online": re.compile(r"Found the following article online, use it to answer the question: "
                                       r"(?P<q>.+?)\n\n(?P<c>.+)", re.S),
    "Given_Context_Answer_Question": re.compile(r"(?P<q>.+?)\n\nAnswer the above question based on the context "
                                                r"below:\n\n(?P<c>.+)", re.S),
    "Guess_Answer": re.compile(r"The answer to the question: (?P<q>.+?) is inside the article: (?P<c>.+), can you "
                               r"guess it \?", re.S),
    "Read_And_Extract_": re.compile(r"Read the following paragraph and extract the answer for the question: "
                                    r"(?P<q>.+?)\n\n(?P<c>.+)", re.S),
    "What_Is_The_Answer": re.compile(r"What is the answer for the question: (?P<q>.+?) from the following article "
                                     r"\?\n\n(?P<c>.+)", re.S),
}


def _t0_extractive_qa(root: Path, template_name: Callable[[str], str | None],
                      patterns: dict[str, re.Pattern]) -> dict[tuple[str, str], str]:
    """Unique (question, context) -> answer from the t0_train_50k templates that ``template_name`` maps to a pattern."""
    found = {}
    for row in _jsonl(root / "t0_train_50k" / "t0_train_50k.jsonl.gz"):
        pattern = patterns.get(template_name(row["template"]) or "")
        if pattern and (match := pattern.fullmatch(row["prompt"].strip())):
            found[(match["q"].strip(), match["c"].strip())] = row["completion"].replace("<|endoftext|>", "").strip()
    return found


def _not_squad_dev(root: Path) -> Callable[[str], bool]:
    """Whether a paragraph is not one of squad_v1_dev's (by its normalised start): no RAG source may train on them."""
    squad = json.loads((root / "squad_v1_dev" / "dev-v1.1.json").read_text())
    held_out = {_normal(p["context"])[:200] for article in squad["data"] for p in article["paragraphs"]}
    return lambda paragraph: _normal(paragraph)[:200] not in held_out


def _extractive_rag(found: dict[tuple[str, str], str], root: Path, rng: random.Random) -> list[dict]:
    """RAG rows (a window of the context around the answer, then a window of another context) from
    (question, context) -> answer, dropping any context that is a paragraph of ``squad_v1_dev``."""
    not_squad_dev = _not_squad_dev(root)
    questions = [(q, c, a) for (q, c), a in sorted(found.items())
                 if len(q.split()) >= 3 and a and len(a) <= 100 and a in c and not_squad_dev(c)]
    contexts = sorted({c for _, c, _ in questions})
    rows = []
    for question, context, answer in questions:
        gold = _answer_window(context, context.find(answer), answer, rng)
        other = rng.choice(contexts)
        while other == context:
            other = rng.choice(contexts)
        if answer in gold:
            rows.append({"question": question, "passages": [gold, _answer_window(other, 0, "", rng)], "answer": answer})
    return rows


def _adversarial_qa_template(template: str) -> str | None:  # adversarial_qa_dbert_based_on -> based_on
    return template.split("_", 3)[-1] if template.startswith("adversarial_qa") else None


def _quoref_template(template: str) -> str | None:
    return template.removeprefix("quoref_") if template.startswith("quoref_") else None


def adversarialqa_rag(root: Path, rng: random.Random) -> list[dict]:
    """AdversarialQA (SQuAD-style Wikipedia paragraphs, questions written to beat QA models) from its P3 templates."""
    return _extractive_rag(_t0_extractive_qa(root, _adversarial_qa_template, ADVERSARIAL_QA_PATTERNS), root, rng)


def quoref_rag(root: Path, rng: random.Random) -> list[dict]:
    """Quoref (long Wikipedia paragraphs, questions that need coreference: "the first name of the person who...")."""
    return _extractive_rag(_t0_extractive_qa(root, _quoref_template, QUOREF_PATTERNS), root, rng)


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")


def _reading_task(window: str, distractor: str, rng: random.Random) -> dict | None:
    """One question only the window answers: what follows a 3-word phrase of it (1-4 words), or the
    sentence holding a 3-word phrase of it, word for word. The phrase occurs once in the window and not
    in the distractor, so the answer is a copy from one place of the gold passage."""
    # whole sentences only: "Adam J." or a list without a full stop is no sentence end
    sentences = [s for s in SENTENCE_END.split(window) if 8 <= len(s.split()) <= 40 and re.search(r"\w{3}[.!?]$", s)]
    if not sentences:
        return None
    words = rng.choice(sentences).split()
    at = rng.randint(3, len(words) - 1)
    phrase = " ".join(words[at - 3:at])
    if window.count(phrase) != 1 or phrase in distractor:
        return None
    if rng.random() < 0.5:
        answer = " ".join(words[at:at + rng.randint(1, 4)]).rstrip(".,;:!?")
        question, copied = f'In the passage, which words come right after "{phrase}"?', f"{phrase} {answer}"
    else:
        answer = copied = " ".join(words)
        question = f'Quote the sentence of the passage that contains "{phrase}".'
    if not answer or copied not in window:  # a sentence broken by a double space or a newline is not copied as written
        return None
    return {"question": question, "passages": [window, distractor], "answer": answer}


def reading_rag(root: Path, rng: random.Random) -> list[dict]:
    """Locate-and-copy questions over the paragraphs of the RAG sources (TyDi QA train, AdversarialQA,
    Quoref): many copied tokens per passage, to sharpen reading from a cached passage's states."""
    tydiqa = json.loads((root / "tydiqa_goldp" / "train" / "tydiqa.goldp.en.train.json").read_text())
    contexts = {p["context"] for article in tydiqa["data"] for p in article["paragraphs"]}
    for template, patterns in ((_adversarial_qa_template, ADVERSARIAL_QA_PATTERNS), (_quoref_template, QUOREF_PATTERNS)):
        contexts |= {c for _, c in _t0_extractive_qa(root, template, patterns)}
    contexts = sorted(filter(_not_squad_dev(root), contexts))
    rows = []
    for context in contexts:
        window = _answer_window(context, rng.randrange(len(context)), "", rng)
        distractor = _answer_window(rng.choice(contexts), 0, "", rng)
        if distractor != window and (row := _reading_task(window, distractor, rng)):
            rows.append(row)
    return rows


EMBEDDING_SOURCES: dict[str, Callable[[Path, random.Random], list[dict]]] = {
    "medquad": medquad, "twentynewsgroups": twentynewsgroups, "tydiqa": tydiqa, "wikiqa": wikiqa,
    "flickr8k": flickr8k, "banking77": banking77, "nli": nli, "stsb": stsb,
    "stsb_scored": stsb_scored, "qqp": qqp}
GENERATIVE_SOURCES: dict[str, Callable[[Path, random.Random], list[dict]]] = {
    "t0": t0, "flan_cot": flan_cot, "gsm8k": gsm8k, "selfinstruct": selfinstruct}
RAG_SOURCES: dict[str, Callable[[Path, random.Random], list[dict]]] = {
    "tydiqa": tydiqa_rag, "adversarialqa": adversarialqa_rag, "quoref": quoref_rag, "reading": reading_rag}
# built only when named, so a mix built without --source is what it was before they were added
OPT_IN_SOURCES = {"rag-quoref", "rag-reading"}


def build_training_mix(output_dir: str | Path, *, source_dir: str | Path | None = None,
                       max_per_source: int | None = None, seed: int = 0,
                       sources: list[str] | None = None) -> dict[str, int]:
    """Write ``embedding/<source>.jsonl``, ``generative/<source>.jsonl`` and ``rag/<source>.jsonl`` under ``output_dir``.

    ``max_per_source`` keeps a seeded random sample of each source; returns rows written per source.
    Each file is written to a temp name and renamed, so an interrupted build leaves no partial file.
    """
    root = Path(source_dir) if source_dir else data_dir()
    output_dir = Path(output_dir)
    chosen = {**{n: ("embedding", f) for n, f in EMBEDDING_SOURCES.items()},
              **{n: ("generative", f) for n, f in GENERATIVE_SOURCES.items()},
              **{f"rag-{n}": ("rag", f) for n, f in RAG_SOURCES.items()}}
    unknown = set(sources or []) - set(chosen)
    if unknown:
        raise ValueError(f"unknown source(s) {sorted(unknown)}; choose from {sorted(chosen)}")
    counts = {}
    for name, (kind, read) in chosen.items():
        if (sources and name not in sources) or (not sources and name in OPT_IN_SOURCES):
            continue
        rng = random.Random(f"{seed}-{name}")
        rows = read(root, rng)
        rng.shuffle(rows)
        rows = rows[:max_per_source] if max_per_source else rows
        target = output_dir / kind / f"{name.removeprefix('rag-')}.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.with_suffix(".jsonl.tmp")
        with staging.open("w", encoding="utf-8") as file:
            for row in rows:
                file.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(staging, target)
        counts[name] = len(rows)
    (output_dir / "mix.json").write_text(json.dumps({"source_dir": str(root), "seed": seed,
                                                     "max_per_source": max_per_source, "rows": counts}, indent=2))
    return counts
