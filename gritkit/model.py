"""GritLM: one decoder model that embeds (bidirectional, mean-pooled) and generates (causal).

Reads top to bottom: the model class with loading, embedding (format from ``gritkit.prompts``
-> tokenise -> forward -> pool), generation (chat format -> decode loop),
and the key/value caches the RAG module reuses.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase

from gritkit import loading
from gritkit.prompts import (Message, chat_prompt, continuation_prompt, embedding_prefix,  # noqa: F401 (re-exported)
                             grit_chat_prompt)

if TYPE_CHECKING:
    from gritkit.backends.llamacpp import GenerationBackend, LlamaCppDecoder
    from gritkit.export.gguf import GgufDtype

Attention = Literal["bidirectional", "causal"]
Pooling = Literal["mean", "weighted_mean", "last"]
ConvertTo = Literal["numpy", "torch", "list"]
Quantize = Literal["int8"]
Precision = Literal["float32", "int8", "binary"]

CONFIG_FILENAME = "gritkit_config.json"
PROMPT_FORMAT = "grit"  # <|user|>\n{instruction}\n<|embed|>\n{text}, see gritkit.prompts

logger = logging.getLogger(__name__)


@dataclass
class EmbeddingBatch:
    """Right-padded token ids for embedding; ``pooling_mask`` is 1 on text tokens only."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    pooling_mask: torch.Tensor

    def to(self, device: torch.device | str) -> EmbeddingBatch:
        return EmbeddingBatch(self.input_ids.to(device), self.attention_mask.to(device), self.pooling_mask.to(device))


def pool(hidden: torch.Tensor, pooling_mask: torch.Tensor, pooling: Pooling = "mean") -> torch.Tensor:
    """Pool hidden states ``(b, t, d)`` over the positions where ``pooling_mask`` is 1."""
    mask = pooling_mask.to(hidden.dtype).unsqueeze(-1)
    if pooling == "mean":
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
    if pooling == "weighted_mean":  # SGPT: later tokens have seen more context, weigh them more
        weights = mask * torch.cumsum(mask, dim=1)
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
    if pooling == "last":
        last = pooling_mask.shape[1] - 1 - pooling_mask.flip(1).int().argmax(1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    raise ValueError(f"pooling must be 'mean', 'weighted_mean' or 'last', not {pooling!r}")


def _check_texts(texts: Sequence[str]) -> None:
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
        if not text.strip():
            raise ValueError(f"texts[{index}] is empty: an empty text has no tokens to pool")


def _copied_down_to(module: torch.nn.Module, decoder: torch.nn.Module) -> torch.nn.Module | None:
    """Shallow copies of the modules from ``module`` down to ``decoder``, which gets a copy of its config
    (None where ``decoder`` is not inside ``module``). A plain function: a recursive closure is a reference
    cycle, which the trainer's graph must not hold (it is freed by reference counting alone)."""
    if module is decoder:
        clone = copy.copy(module)
        clone.config = copy.copy(module.config)
        return clone
    for name, child in module._modules.items():
        if child is not None and (inner := _copied_down_to(child, decoder)) is not None:
            clone = copy.copy(module)
            clone._modules = {**module._modules, name: inner}
            return clone
    return None


class GritLM:
    """A decoder LM used both as an embedding model and as a generative model.

    Example::

        model = GritLM.from_pretrained()               # the embedded default, offline
        vectors = model.encode(["a text"], instruction="Represent the sentence")
        reply = model.generate([{"role": "user", "content": "Hi"}], max_new_tokens=32)
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        *,
        attention: Attention = "bidirectional",
        pooling: Pooling = "mean",
        max_length: int | None = None,
        name: str = "",
        quantize: Quantize | None = None,
    ):
        """Wrap a loaded decoder; ``quantize`` only records how ``model`` was already quantised."""
        if attention not in ("bidirectional", "causal"):
            raise ValueError(f"attention must be 'bidirectional' or 'causal', not {attention!r}")
        if pooling not in ("mean", "weighted_mean", "last"):
            raise ValueError(f"pooling must be 'mean', 'weighted_mean' or 'last', not {pooling!r}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.attention: Attention = attention
        self.pooling: Pooling = pooling
        self.name = name
        self.quantize = quantize
        self._fingerprint: str | None = None
        self.llamacpp: LlamaCppDecoder | None = None  # set by from_pretrained(generation_backend="llamacpp")
        context = getattr(self.config, "max_position_embeddings", None) or 4096
        self.max_length = max_length or context
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(
        cls,
        spec: str | os.PathLike | None = None,
        *,
        device: str | None = None,
        dtype: torch.dtype | None = None,
        attention: Attention | None = None,
        pooling: Pooling | None = None,
        max_length: int | None = None,
        quantize: Quantize | None = None,
        merge_adapter: bool = True,
        generation_backend: GenerationBackend = "torch",
        gguf_dtype: GgufDtype = "f16",
    ) -> GritLM:
        """Load a model offline from ``spec``: ``"default"``, ``"smollm2-base"``, a .gguf file,
        a model directory or a PEFT adapter directory. bf16 on GPU, fp32 on CPU.

        Settings saved by :meth:`save_pretrained` (``gritkit_config.json``: attention, pooling,
        max_length, quantisation) are the defaults; an argument given here overrides them.
        ``quantize="int8"`` (CPU, inference only) stores linear weights as int8 with dynamic
        activation quantisation: decoding reads 4x fewer bytes per token, so it runs ~3x faster;
        embeddings move with it (cosine ~0.9 to fp32 on the default), so index with one setting.
        A PEFT adapter (the default model is one) is merged into the weights unless ``merge_adapter=False``.

        ``generation_backend="llamacpp"`` decodes with llama.cpp (``gritkit[llamacpp]``) on a GGUF
        export of these weights (``gguf_dtype``: f16, f32 or q8_0), written once into the cache
        folder; embeddings and generation after RAG key/value caches stay on PyTorch
        (see :mod:`gritkit.backends.llamacpp`).
        """
        saved = read_saved_config(spec)
        attention = attention or saved.get("attention") or "bidirectional"
        pooling = pooling or saved.get("pooling") or "mean"
        max_length = max_length or saved.get("max_length")
        quantize = quantize or saved.get("quantize")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
        if quantize is not None:
            _check_quantize(quantize, device)  # before loading: a bad option should not cost a model load
        if generation_backend != "torch" or gguf_dtype != "f16":
            from gritkit.backends.llamacpp import check_backend

            check_backend(generation_backend, gguf_dtype)
            if quantize is not None and generation_backend == "llamacpp":
                raise ValueError("quantize and generation_backend='llamacpp' do not combine: pick gguf_dtype='q8_0' "
                                 "for 8-bit llama.cpp decoding")
        model, tokenizer = loading.load(spec, dtype=dtype, device=device, merge_adapter=merge_adapter)
        grit = cls(model, tokenizer, attention=attention, pooling=pooling, max_length=max_length,
                   name=str(spec or loading.DEFAULT_SPEC), quantize=quantize)
        if quantize is not None:
            grit.fingerprint  # noqa: B018 (of the weights before quantising; the int8 ones cannot be read back)
            grit.model = _quantize_int8(model)
        if generation_backend == "llamacpp":
            from gritkit.backends.llamacpp import LlamaCppDecoder

            grit.llamacpp = LlamaCppDecoder.for_model(grit, dtype=gguf_dtype)
        return grit

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write weights (or the PEFT adapter), tokenizer and ``gritkit_config.json`` (the settings
        and the weights' fingerprint); ``from_pretrained`` reads it back with the same settings."""
        if self.quantize is not None:
            raise ValueError(f"a {self.quantize} model cannot be saved: save the unquantised model and load it "
                             f"with quantize={self.quantize!r}")
        self._fingerprint = None  # the weights may have been trained since it was computed
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        settings = {"prompt_format": PROMPT_FORMAT, "attention": self.attention, "pooling": self.pooling,
                    "max_length": self.max_length, "quantize": self.quantize, "fingerprint": self.fingerprint}
        (Path(directory) / CONFIG_FILENAME).write_text(json.dumps(settings, indent=2) + "\n")

    @property
    def fingerprint(self) -> str:
        """Identity of what this model embeds with: sha256 over its weights (name order, bytes as held,
        so the dtype counts) and its quantisation. Indexes and cached key/value states record it.

        Computed on first use (about a second per GB) and cached; :meth:`save_pretrained` refreshes it.
        """
        if self._fingerprint is None:
            digest = hashlib.sha256(weights_digest(self.model).encode())
            digest.update(f"quantize={self.quantize}".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @property
    def config(self):
        return self.model.config

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def embedding_dim(self) -> int:
        return self.config.hidden_size

    @property
    def backbone(self) -> torch.nn.Module:
        """The decoder without its LM head (LoRA layers included when a PEFT model)."""
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return base.get_decoder()

    def _own_config(self, root: torch.nn.Module) -> torch.nn.Module:
        """``root`` (the model or its decoder) for one pass that sets ``is_causal``, with a config of its own.

        transformers applies a pass's ``is_causal`` by setting it on the decoder's config for the length of
        the call. Shared, two threads' passes (the server's embedding batcher beside its generation worker,
        a user's thread pool) would read each other's attention, and a bidirectional value could outlive
        its call for plain causal calls (``generate``, training). So the pass runs on shallow copies of the
        modules from ``root`` down to the decoder, the decoder's with a copy of the config: same weights.
        """
        return _copied_down_to(root, self.backbone) or root

    # ------------------------------------------------------------ embedding

    def tokenize_for_embedding(
        self,
        texts: Sequence[str],
        instruction: str | Sequence[str] = "",
        *,
        max_length: int | None = None,
        truncate: bool = True,
    ) -> EmbeddingBatch:
        """Tokenise ``prefix + text`` per item; the prefix (instruction) is masked out of pooling.

        The text's ids are those of the joint tokenisation of ``prefix + text`` and the pooling mask
        starts where the prefix's own tokens end, so the instruction boundary is exact.
        """
        _check_texts(texts)
        instructions = [instruction] * len(texts) if isinstance(instruction, str) else list(instruction)
        if len(instructions) != len(texts):
            raise ValueError(f"{len(instructions)} instructions for {len(texts)} texts")
        max_length = max_length or self.max_length
        rows, prefix_lengths, truncated = [], [], 0
        prefixes: dict[str, list[int]] = {}
        for text, instr in zip(texts, instructions):
            if instr not in prefixes:
                prefixes[instr] = self.tokenizer(embedding_prefix(instr), add_special_tokens=True)["input_ids"]
            prefix = prefixes[instr]
            body = self._text_ids_after(prefix, embedding_prefix(instr), text)
            room = max_length - len(prefix)
            if room < 1:
                raise ValueError(f"instruction alone is {len(prefix)} tokens, over max_length={max_length}")
            if len(body) > room:
                if not truncate:
                    raise ValueError(f"text of {len(prefix) + len(body)} tokens is over max_length={max_length}")
                body, truncated = body[:room], truncated + 1
            rows.append(prefix + body)
            prefix_lengths.append(len(prefix))
        if truncated:
            warnings.warn(f"{truncated} text(s) truncated to max_length={max_length} tokens", stacklevel=3)
        width = max(len(row) for row in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([row + [pad] * (width - len(row)) for row in rows], dtype=torch.long)
        positions = torch.arange(width)
        lengths = torch.tensor([len(row) for row in rows])
        attention_mask = (positions[None, :] < lengths[:, None]).long()
        pooling_mask = attention_mask * (positions[None, :] >= torch.tensor(prefix_lengths)[:, None]).long()
        return EmbeddingBatch(input_ids, attention_mask, pooling_mask)

    def _text_ids_after(self, prefix_ids: list[int], prefix: str, text: str) -> list[int]:
        """The text's token ids as the joint tokenisation of ``prefix + text`` has them (GritLM's way).

        A SentencePiece tokenizer with a prefix space (Llama-2, Mistral) puts "▁" before a text
        tokenised alone, not after the prefix's newline. Where the joint ids do not begin with the
        prefix's (a merge across the boundary), the text is tokenised alone so the boundary stays exact.
        """
        joint = self.tokenizer(prefix + text, add_special_tokens=True)["input_ids"]
        if joint[:len(prefix_ids)] == prefix_ids:
            return joint[len(prefix_ids):]
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                      *, attention: Attention | None = None) -> torch.Tensor:
        """Last hidden states of the backbone with bidirectional or causal attention."""
        is_causal = (attention or self.attention) == "causal"
        output = self._own_config(self.backbone)(input_ids=input_ids, attention_mask=attention_mask,
                                                 is_causal=is_causal, use_cache=False)
        return output.last_hidden_state

    def embed_batch(self, batch: EmbeddingBatch, *, attention: Attention | None = None,
                    pooling: Pooling | None = None) -> torch.Tensor:
        """Forward + pool one tokenised batch; differentiable (training uses this too)."""
        batch = batch.to(self.device)
        hidden = self.hidden_states(batch.input_ids, batch.attention_mask, attention=attention)
        return pool(hidden, batch.pooling_mask, pooling or self.pooling)

    @torch.inference_mode()
    def encode(
        self,
        texts: str | Sequence[str],
        instruction: str | Sequence[str] = "",
        *,
        batch_size: int = 32,
        normalize: bool = True,
        show_progress_bar: bool = False,
        convert_to: ConvertTo = "numpy",
        max_length: int | None = None,
        truncate: bool = True,
        attention: Attention | None = None,
        pooling: Pooling | None = None,
        dimensions: int | None = None,
        precision: Precision = "float32",
    ) -> np.ndarray | torch.Tensor | list[list[float]]:
        """Embed texts with the GRIT prompt; returns ``(n, d)`` float32 (one row for a single str).

        Texts are sorted by length so each batch carries little padding; the output keeps input order.
        ``dimensions`` and ``precision`` make compact vectors (see :func:`compact_embeddings`);
        compact vectors come back as numpy arrays whatever ``convert_to`` says, except "list".
        """
        if precision not in ("float32", "int8", "binary"):
            raise ValueError(f"precision must be 'float32', 'int8' or 'binary', not {precision!r}")
        if dimensions is not None and not 1 <= dimensions <= self.embedding_dim:
            raise ValueError(f"dimensions must be between 1 and {self.embedding_dim}, not {dimensions}")
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        instructions = [instruction] * len(texts) if isinstance(instruction, str) else list(instruction)
        _check_texts(texts)
        if len(instructions) != len(texts):
            raise ValueError(f"{len(instructions)} instructions for {len(texts)} texts")
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        chunks = []
        for start in tqdm(range(0, len(order), batch_size), desc="encode", disable=not show_progress_bar):
            ids = order[start:start + batch_size]
            batch = self.tokenize_for_embedding([texts[i] for i in ids], [instructions[i] for i in ids],
                                                max_length=max_length, truncate=truncate)
            chunks.append(self.embed_batch(batch, attention=attention, pooling=pooling).float())
        embeddings = torch.cat(chunks) if chunks else torch.empty(0, self.embedding_dim)
        embeddings = embeddings[torch.argsort(torch.tensor(order, dtype=torch.long))] if order else embeddings
        if normalize and len(embeddings):
            embeddings = F.normalize(embeddings, dim=-1)
        if dimensions is not None or precision != "float32":
            compact = compact_embeddings(embeddings.cpu().numpy(), dimensions=dimensions, precision=precision)
            compact = compact[0] if single else compact
            return compact.tolist() if convert_to == "list" else compact
        embeddings = embeddings[0] if single else embeddings
        if convert_to == "torch":
            return embeddings.cpu()
        if convert_to == "list":
            return embeddings.cpu().tolist()
        return embeddings.cpu().numpy().astype(np.float32)

    # ------------------------------------------------------------ generation

    def chat_prompt(self, messages: Sequence[Message]) -> str:
        """The text that precedes the assistant's reply: the model's chat template, else GRIT's."""
        if not messages:
            raise ValueError("messages is empty")
        for index, message in enumerate(messages):
            if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
                raise TypeError(f"messages[{index}] must be a dict with 'role' and 'content' (str)")
        return chat_prompt(self.tokenizer, messages)

    def prompt_ids(self, prompt: str | Sequence[Message], *, after_cache: bool = False) -> list[int]:
        """Token ids for a raw completion prompt (str) or a conversation (list of messages).

        ``after_cache``: the prompt continues cached tokens, so no start-of-sequence token and no
        system preamble; messages are rendered as later turns of the chat template.
        """
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("prompt is empty")
            return self.tokenizer(prompt, add_special_tokens=not after_cache)["input_ids"]
        if after_cache:
            self.chat_prompt(prompt)  # the same checks of the messages
            return self.tokenizer(continuation_prompt(self.tokenizer, prompt), add_special_tokens=False)["input_ids"]
        return self.tokenizer(self.chat_prompt(prompt), add_special_tokens=False)["input_ids"]

    def stop_token_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        configured = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        ids.update(configured if isinstance(configured, list) else [configured])
        return {i for i in ids if i is not None}

    @torch.inference_mode()
    def prefill(self, input_ids: Sequence[int] | torch.Tensor, past_key_values: DynamicCache | None = None,
                *, attention: Attention = "causal") -> tuple[DynamicCache, torch.Tensor]:
        """Run tokens through the model after ``past_key_values``; returns the extended cache and the last logits.

        The caller's cache is not changed: the returned cache is a new one that shares its tensors.
        """
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device).reshape(1, -1)
        cache = _fork(past_key_values) if past_key_values is not None else DynamicCache(config=self.config)
        output = self._own_config(self.model)(input_ids=ids, past_key_values=cache, use_cache=True,
                                              is_causal=attention == "causal", logits_to_keep=1)
        return output.past_key_values, output.logits[0, -1]

    @torch.inference_mode()
    def token_logits(self, input_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Next-token logits at every position of one causal pass over ``input_ids`` (to score a text)."""
        ids = torch.as_tensor(input_ids, dtype=torch.long, device=self.device).reshape(1, -1)
        return self._own_config(self.model)(input_ids=ids, use_cache=False, is_causal=True).logits[0]

    @property
    def default_penalties(self) -> dict[str, float]:
        """The decoding penalties the model's generation config sets (``generation_config.json`` of the
        model or adapter folder, as in transformers and vLLM); a call that gives one overrides it."""
        config = getattr(self.model, "generation_config", None)
        return {name: float(value) for name in NEUTRAL_PENALTIES if (value := getattr(config, name, None)) is not None}

    @torch.inference_mode()
    def generate_ids(
        self,
        input_ids: Sequence[int],
        *,
        past_key_values: DynamicCache | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        frequency_penalty: float | None = None,
        presence_penalty: float | None = None,
        repetition_penalty: float | None = None,
    ) -> Iterator[int]:
        """Yield new token ids one at a time (greedy when temperature is 0), until EOS or the budget.

        With ``past_key_values``, ``input_ids`` are only the tokens after the cached prefix. The
        penalties (see :class:`Sampler`) count only the tokens generated here; one not given is the
        model's default (:attr:`default_penalties`).
        """
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1")
        if len(input_ids) == 0:
            raise ValueError("generation needs at least one new input token after the cache")
        given = {"frequency_penalty": frequency_penalty, "presence_penalty": presence_penalty,
                 "repetition_penalty": repetition_penalty}
        penalties = {**self.default_penalties, **{name: value for name, value in given.items() if value is not None}}
        sampler = Sampler(temperature, top_p, seed=seed, device=self.device, **penalties)
        stop_ids = self.stop_token_ids()
        if self.llamacpp is not None and past_key_values is None:  # after a RAG cache, decoding stays here
            yield from self.llamacpp.generate_ids(
                input_ids, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
                next_token=lambda logits: sampler(logits.to(self.device)))
            return
        cache, logits = self.prefill(input_ids, past_key_values)
        for step in range(max_new_tokens):
            token = sampler(logits)
            if token in stop_ids:
                return
            yield token
            if step + 1 < max_new_tokens:
                cache, logits = self.prefill([token], cache)

    def generate(
        self,
        prompt: str | Sequence[Message],
        *,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        stream: bool = False,
        past_key_values: DynamicCache | None = None,
        **penalties: float,
    ) -> str | Iterator[str]:
        """Generate a reply to a conversation (list of messages) or continue a raw prompt (str).

        ``stream=True`` returns an iterator of text pieces; ``stop`` strings end the text (excluded).
        With ``past_key_values`` the prompt continues the cached tokens (no BOS, no system preamble,
        messages as later turns); the cache itself is left as it was. ``penalties`` are
        ``frequency_penalty``, ``presence_penalty`` and ``repetition_penalty`` (see :class:`Sampler`).
        """
        input_ids = self.prompt_ids(prompt, after_cache=past_key_values is not None)
        pieces = self.stream_text(input_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                                  top_p=top_p, stop=stop, seed=seed, past_key_values=past_key_values, **penalties)
        return pieces if stream else "".join(pieces)

    def stream_text(self, input_ids: Sequence[int], *, stop: str | Sequence[str] | None = None,
                    **sampling) -> Iterator[str]:
        """Decode :meth:`generate_ids` into text pieces, cutting at the first stop string."""
        stops = [stop] if isinstance(stop, str) else [s for s in (stop or []) if s]
        generated: list[int] = []
        emitted = 0
        for token in self.generate_ids(input_ids, **sampling):
            generated.append(token)
            text = self.tokenizer.decode(generated, skip_special_tokens=True)
            cut = min((text.find(s) for s in stops if s in text), default=-1)
            if cut >= 0:
                if cut > emitted:
                    yield text[emitted:cut]
                return
            # Hold back an incomplete UTF-8 character or a possible start of a stop string.
            safe = len(text.rstrip("\ufffd"))
            for s in stops:
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe -= k
                        break
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        if len(text) > emitted:
            yield text[emitted:]

    # ------------------------------------------------------------ caches for RAG

    def embedding_pass_with_cache(self, text: str, instruction: str = "", *, attention: Attention | None = None,
                                  max_length: int | None = None) -> tuple[torch.Tensor, DynamicCache, list[int]]:
        """One text's embedding forward that also keeps its key/value states; differentiable.

        Returns the pooled (unnormalised) embedding ``(d,)``, the cache over ``prefix + text``
        tokens and those token ids. :meth:`embed_with_cache` uses it.
        """
        batch = self.tokenize_for_embedding([text], instruction, max_length=max_length)
        embeddings, cache = self.embed_batch_with_cache(batch, attention=attention)
        return embeddings[0], cache, batch.input_ids[0].tolist()

    def embed_batch_with_cache(self, batch: EmbeddingBatch, *,
                               attention: Attention | None = None) -> tuple[torch.Tensor, DynamicCache]:
        """:meth:`embed_batch` that also keeps the key/value states of the pass; differentiable.

        Returns the pooled (unnormalised) embeddings ``(b, d)`` and the cache over the batch's padded
        width: row ``i``'s own states are its first ``attention_mask[i].sum()`` positions (right padding is
        masked, so no text sees it). Cache-aware RAG training runs all cached texts of a step in one such pass.
        """
        padded = not bool(batch.attention_mask.all())  # tokenised batches are on the CPU: no device sync
        batch = batch.to(self.device)
        is_causal = (attention or self.attention) == "causal"
        mask = batch.attention_mask if padded else None  # unpadded: the very path of a single text
        output = self._own_config(self.backbone)(input_ids=batch.input_ids, attention_mask=mask, use_cache=True,
                                                 is_causal=is_causal, past_key_values=DynamicCache(config=self.config))
        return pool(output.last_hidden_state, batch.pooling_mask, self.pooling), output.past_key_values

    @torch.inference_mode()
    def embed_with_cache(self, text: str, instruction: str = "", *, attention: Attention | None = None,
                         max_length: int | None = None) -> tuple[np.ndarray, DynamicCache, list[int]]:
        """Embed one text and keep the key/value states of that same pass.

        Returns the normalised embedding, the cache over ``prefix + text`` tokens, and those token ids,
        so generation can continue after them without running the text again (GRIT's RAG caching).
        """
        embedding, cache, token_ids = self.embedding_pass_with_cache(text, instruction, attention=attention,
                                                                     max_length=max_length)
        return F.normalize(embedding.float(), dim=-1).cpu().numpy(), cache, token_ids


def _fork(cache: DynamicCache) -> DynamicCache:
    """A cache the caller's is safe from: dynamic layers grow by ``torch.cat`` (new tensors), so copies
    of the layer objects can share the tensors; any other kind of cache is copied whole."""
    if not all(type(layer).__name__ in ("DynamicLayer", "DynamicSlidingWindowLayer") for layer in cache.layers):
        return copy.deepcopy(cache)
    forked = copy.copy(cache)
    forked.layers = [copy.copy(layer) for layer in cache.layers]
    return forked


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 over a module's state dict in name order: each name, dtype, shape and the raw bytes."""
    digest, seen = hashlib.sha256(), {}
    for name, tensor in sorted(model.state_dict().items()):
        key = (tensor.data_ptr(), tensor.dtype, tensor.shape)
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:{seen.get(key, '')};".encode())
        if key in seen:  # tied weights (embeddings = LM head): hashed once
            continue
        seen[key] = name
        tensor = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(tensor.view(torch.uint8).numpy())  # raw bytes: bf16 has no numpy dtype
    return digest.hexdigest()


def read_saved_config(spec: str | os.PathLike | None) -> dict:
    """The settings a :meth:`GritLM.save_pretrained` directory records, else ``{}``."""
    if spec is None or str(spec) in (loading.DEFAULT_SPEC, loading.BASE_SPEC):
        return {}
    if not (Path(spec).expanduser() / CONFIG_FILENAME).is_file():
        return {}
    path = Path(spec).expanduser() / CONFIG_FILENAME
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise loading.ModelLoadError(f"could not read {path}: {error}") from error
    if saved.get("prompt_format", PROMPT_FORMAT) != PROMPT_FORMAT:
        raise loading.ModelLoadError(f"{path} asks for prompt format {saved['prompt_format']!r}; "
                                     f"this gritkit knows {PROMPT_FORMAT!r}")
    return saved


def compact_embeddings(embeddings: np.ndarray, *, dimensions: int | None = None,
                       precision: Precision = "float32") -> np.ndarray:
    """Smaller vectors from ``(n, d)`` embeddings: keep the first ``dimensions`` and renormalise, then
    store each number in ``precision``.

    * ``"float32"``: unit-length float32 vectors (dot product = cosine);
    * ``"int8"``: each vector scaled so its largest magnitude is 127, rounded (4x smaller than
      float32; compare with cosine, which the per-vector scale does not change);
    * ``"binary"``: the sign bits packed 8 per byte (uint8, ``ceil(d / 8)`` bytes, 32x smaller);
      compare with Hamming distance (``np.unpackbits(a ^ b).sum()``), lower is closer.
    """
    vectors = np.asarray(embeddings, dtype=np.float32)
    if dimensions is not None:
        vectors = vectors[..., :dimensions]
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)
    if precision == "float32":
        return vectors
    if precision == "int8":
        scale = 127 / np.maximum(np.abs(vectors).max(axis=-1, keepdims=True), 1e-12)
        return np.round(vectors * scale).astype(np.int8)
    if precision == "binary":
        return np.packbits(vectors > 0, axis=-1)
    raise ValueError(f"precision must be 'float32', 'int8' or 'binary', not {precision!r}")


def _check_quantize(quantize: str, device: str) -> None:
    if quantize != "int8":
        raise ValueError(f"quantize must be 'int8' or None, not {quantize!r}")
    if not device.startswith("cpu"):
        raise ValueError("quantize='int8' is for CPU inference; on GPU use dtype=torch.bfloat16")


def _quantize_int8(model: PreTrainedModel) -> PreTrainedModel:
    with warnings.catch_warnings():  # torch.ao's eager API is deprecated in favour of torchao, yet works in 2.13
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8, inplace=True)


NEUTRAL_PENALTIES = {"frequency_penalty": 0.0, "presence_penalty": 0.0, "repetition_penalty": 1.0}


class Sampler:
    """Picks each next token from the logits: greedy at temperature 0, else temperature and top-p sampling.

    Penalties apply to the tokens this sampler has picked, not to the prompt, so that an answer may
    copy words from a retrieved passage and cached and uncached prompts decode alike:
    ``frequency_penalty`` and ``presence_penalty`` (OpenAI's, in [-2, 2]) subtract ``count *
    frequency_penalty + presence_penalty`` from the logit of each token already picked;
    ``repetition_penalty`` (transformers', > 0) divides its positive logits and multiplies its negative ones.
    """

    def __init__(self, temperature: float = 0.0, top_p: float = 1.0, *, seed: int | None = None,
                 device: torch.device | str = "cpu", frequency_penalty: float = 0.0,
                 presence_penalty: float = 0.0, repetition_penalty: float = 1.0):
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
        if not (-2 <= frequency_penalty <= 2 and -2 <= presence_penalty <= 2):
            raise ValueError("frequency_penalty and presence_penalty must be in [-2, 2]")
        if not repetition_penalty > 0:
            raise ValueError("repetition_penalty must be > 0")
        self.temperature, self.top_p = temperature, top_p
        self.frequency_penalty, self.presence_penalty = frequency_penalty, presence_penalty
        self.repetition_penalty = repetition_penalty
        self.generator = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
        self.counts: dict[int, int] = {}

    def __call__(self, logits: torch.Tensor) -> int:
        token = self._pick(self.penalize(logits.float()))
        self.counts[token] = self.counts.get(token, 0) + 1
        return token

    def penalize(self, logits: torch.Tensor) -> torch.Tensor:
        """The logits with this sampler's penalties applied to the tokens picked so far."""
        if not self.counts or (self.frequency_penalty == self.presence_penalty == 0 and self.repetition_penalty == 1):
            return logits
        ids = torch.tensor(list(self.counts), device=logits.device)
        counts = torch.tensor(list(self.counts.values()), dtype=logits.dtype, device=logits.device)
        seen = logits[ids]
        seen = torch.where(seen > 0, seen / self.repetition_penalty, seen * self.repetition_penalty)
        seen = seen - counts * self.frequency_penalty - self.presence_penalty
        return logits.index_put((ids,), seen)

    def _pick(self, logits: torch.Tensor) -> int:
        if self.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1:
            sorted_probs, sorted_ids = probs.sort(descending=True)
            keep = sorted_probs.cumsum(0) - sorted_probs < self.top_p
            keep[0] = True  # however small top_p, the most likely token stays
            probs = torch.zeros_like(probs).scatter(0, sorted_ids[keep], sorted_probs[keep])
        return int(torch.multinomial(probs, 1, generator=self.generator))
