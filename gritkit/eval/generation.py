"""Prompting helpers shared by the generative tasks: build prompt ids, decode a completion.

``chat=True`` (the default, as in the GritLM paper's Tülu-style evaluation) puts the task text in
a user turn of the model's chat format and starts the assistant's reply with ``reply_prefix``;
``chat=False`` sends ``task text + reply_prefix`` as a raw completion prompt.
"""

from __future__ import annotations

from collections.abc import Sequence

from gritkit import GritLM


def prompt_ids(model: GritLM, user_text: str, reply_prefix: str = "", *, chat: bool = True) -> list[int]:
    if not chat:
        return model.prompt_ids(user_text + reply_prefix)
    ids = model.prompt_ids([{"role": "user", "content": user_text}])
    return ids + (model.tokenizer(reply_prefix, add_special_tokens=False)["input_ids"] if reply_prefix else [])


def complete(model: GritLM, ids: Sequence[int], *, max_new_tokens: int = 256, stop: Sequence[str] = ()) -> str:
    """Greedy continuation of ``ids``, cut at the first stop string."""
    return "".join(model.stream_text(list(ids), stop=list(stop), max_new_tokens=max_new_tokens))


def require_generator(model: object, task: str) -> GritLM:
    if not isinstance(model, GritLM):
        raise TypeError(f"{task} is a generative task: it needs a GritLM model, not {type(model).__name__}")
    return model
