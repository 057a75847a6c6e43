"""Self-distilled targets for the cache-aware RAG stream: the model's own uncached answers.

Gold answers are short spans. Trained after the cache they teach the model to stop right after a
span, and that leaks into chat (asked to count to 1000, it writes "1"); distillation teacher-forced
on those spans does the same. Here the model first answers each training question as classic
doc-first RAG (gold passage, greedy, in its own words); answers that contain the gold span are kept
as targets (sequence-level knowledge distillation, filtered by correctness); answers that loop or
run out of tokens before the end of the turn are dropped as well. Trained with ``rag_target: gold``
or ``distill`` on the result, the cached path learns the uncached path's answers and style.
:func:`chat_rows` turns the same rows into doc-first chat rows for the generative stream, which
anchors the uncached path while the cached one learns from it.

Resumable: rows are appended batch by batch and ``OUTPUT.progress`` records how many input rows and
output bytes are final, so a killed run restarted with the same command continues where it stopped.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from gritkit.answers import answer_match, is_degenerate
from gritkit.model import GritLM
from gritkit.prompts import rag_prompt, rag_user_message
from gritkit.training.data import RagExample, read_rag_data
from gritkit.training.rag_stream import left_padded


@torch.inference_mode()
def uncached_answers(grit: GritLM, examples: Sequence[RagExample], *,
                     max_new_tokens: int = 64) -> list[tuple[str, bool]]:
    """Greedy doc-first RAG answers over each example's gold passage, generated as one left-padded batch.

    Each answer comes with whether it ended its turn (False: cut at ``max_new_tokens``).
    """
    tokenizer = grit.tokenizer
    prompts = [list(grit.prompt_ids(rag_prompt(tokenizer, e.question, e.passages[:1], "none", "doc_first")))
               for e in examples]
    input_ids, attention_mask, _ = left_padded(grit, prompts)  # generate derives positions from the mask
    # what generate appends after a row has finished; skipped when decoding
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stops = sorted(grit.stop_token_ids())
    output = grit.model.generate(input_ids=input_ids.to(grit.device), attention_mask=attention_mask.to(grit.device),
                                 max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=stops)
    answers = output[:, input_ids.shape[1]:].cpu()
    finished = torch.isin(answers, torch.tensor(stops)).any(dim=1).tolist()
    texts = [text.strip() for text in tokenizer.batch_decode(answers, skip_special_tokens=True)]
    return list(zip(texts, finished))


def usable_target(answer: str, finished: bool, gold: str, keep: str = "correct",
                  max_answer_words: int | None = None) -> bool:
    """A self-target worth training on: non-empty, ended its turn, no loop, at most ``max_answer_words``
    words (None: any length), and (``keep="correct"``) right."""
    short = max_answer_words is None or len(answer.split()) <= max_answer_words
    return (bool(answer) and finished and short and not is_degenerate(answer)
            and (keep == "all" or bool(answer_match(answer, [gold]))))


def write_self_targets(grit: GritLM, inputs: Sequence[str | Path], output: str | Path, *, keep: str = "correct",
                       batch_size: int = 16, max_new_tokens: int = 64, limit: int | None = None,
                       max_answer_words: int | None = None) -> dict[str, int]:
    """Write RAG rows whose ``answer`` is the model's own uncached answer (``gold_answer`` keeps the span).

    ``keep="correct"`` drops rows whose answer does not contain the gold span; ``"all"`` keeps every row.
    ``max_answer_words`` also drops answers longer than that many words.
    Returns the counts ``{"rows", "kept"}`` over the whole file, the resumed part included.
    """
    if keep not in ("correct", "all"):
        raise ValueError(f"keep must be 'correct' or 'all', not {keep!r}")
    if batch_size < 1 or max_new_tokens < 1 or (max_answer_words is not None and max_answer_words < 1):
        raise ValueError("batch_size, max_new_tokens and max_answer_words must be >= 1")
    examples = read_rag_data(inputs)[:limit]
    output, progress = Path(output), _progress_path(output)
    done = _read_progress(output)
    if output.is_file() and done is None:
        raise FileExistsError(f"{output} exists and is not a self-targets run to resume: remove it or pick another path")
    done = done or {"rows": 0, "kept": 0, "bytes": 0}
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "ab") as sink:
        sink.truncate(done["bytes"])  # drops a batch half-written when the last run was killed
        for start in tqdm(range(done["rows"], len(examples), batch_size), desc="self targets",
                          initial=done["rows"] // batch_size, total=-(-len(examples) // batch_size)):
            batch = examples[start:start + batch_size]
            for example, (answer, finished) in zip(batch, uncached_answers(grit, batch, max_new_tokens=max_new_tokens)):
                if usable_target(answer, finished, example.answer, keep, max_answer_words):
                    row = {"question": example.question, "passages": example.passages, "answer": answer,
                           "gold_answer": example.answer}
                    sink.write((json.dumps(row, ensure_ascii=False) + "\n").encode())
                    done["kept"] += 1
            sink.flush()
            os.fsync(sink.fileno())
            done |= {"rows": start + len(batch), "bytes": sink.tell()}
            _write_atomic(progress, json.dumps(done))
    return {"rows": done["rows"], "kept": done["kept"]}


def finished_counts(inputs: Sequence[str | Path], output: str | Path, *, limit: int | None = None) -> dict[str, int] | None:
    """The counts of :func:`write_self_targets` if its run at ``output`` over ``inputs`` has answered every row,
    else None, read without a model (a finished run's ``.progress`` file stays, so a rerun costs no model load)."""
    done = _read_progress(output)
    if not (Path(output).is_file() and done):
        return None
    return {"rows": done["rows"], "kept": done["kept"]} if done["rows"] >= len(read_rag_data(inputs)[:limit]) else None


def _progress_path(output: str | Path) -> Path:
    return Path(f"{output}.progress")


def _read_progress(output: str | Path) -> dict[str, int] | None:
    """What a self-targets run at ``output`` has made final (rows, kept, bytes), or None if none ran there."""
    progress = _progress_path(output)
    return json.loads(progress.read_text()) if progress.is_file() else None


def chat_rows(examples: Sequence[RagExample], *, correct_only: bool = False) -> list[dict]:
    """Each RAG row as the doc-first chat turn its self-target was answered in (gold passage only).

    ``correct_only`` keeps the rows whose answer contains their ``gold_answer`` (self-targets written with
    ``keep="all"``: every answer serves the cached path's distillation, only right ones anchor chat).
    """
    if correct_only:
        examples = [e for e in examples if e.gold_answer and answer_match(e.answer, [e.gold_answer])]
    return [{"messages": [{"role": "user", "content": rag_user_message(e.question, e.passages[:1], "doc_first")},
                          {"role": "assistant", "content": e.answer}]} for e in examples]


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)
