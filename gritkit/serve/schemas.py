"""Request bodies of the OpenAI API (and gritkit's RAG route) as pydantic models.

Unknown fields are refused (``extra="forbid"``) so a typo gets a 400 instead of being
silently ignored. Fields OpenAI defines but gritkit cannot honour (logit bias, logprobs,
several choices) are accepted only at their neutral value; anything else is a 400.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr,
                      ValidationInfo, field_validator)


def _valid_unicode(text: str) -> str:
    # JSON may carry lone UTF-16 surrogates ("\ud800"): valid JSON, but not text the tokenizer can take.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        surrogate = text[error.start]
        raise ValueError(f"contains an unpaired surrogate ({surrogate!r}), which is not valid Unicode") from None
    return text


Text = Annotated[StrictStr, AfterValidator(_valid_unicode)]


class OpenAIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: StrictStr | None = None  # None serves the one loaded model
    user: StrictStr | None = None  # accepted for compatibility, unused


def _only_neutral(neutral: dict[str, tuple]):
    """A validator for OpenAI options gritkit does not implement: only their neutral values pass."""

    def check(cls, value: Any, info: ValidationInfo) -> Any:
        accepted = neutral[info.field_name]
        if value not in accepted:
            raise ValueError(f"gritkit does not support '{info.field_name}'; only {accepted[0]!r} is accepted")
        return value

    return field_validator(*neutral)(check)


# ---------------------------------------------------------------- embeddings

class EmbeddingRequest(OpenAIRequest):
    """``input`` becomes a list of strings or a list of token-id arrays (never both)."""

    input: list[str] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = Field(None, ge=1)
    instruction: Text = ""  # gritkit extra: the GRIT instruction (attended to, not pooled)
    precision: Literal["float32", "int8", "binary"] = "float32"  # gritkit extra: see GritLM.encode

    @field_validator("input", mode="before")
    @classmethod
    def _texts_or_token_arrays(cls, value: Any) -> list[str] | list[list[int]]:
        if isinstance(value, str):
            return [_valid_unicode(value)]
        if isinstance(value, list) and value:
            if all(isinstance(item, str) for item in value):
                return [_valid_unicode(item) for item in value]
            if all(type(item) is int for item in value):
                return [value]
            if all(isinstance(row, list) and row and all(type(t) is int for t in row) for row in value):
                return value
        raise ValueError("'input' must be a string, a non-empty list of strings, a non-empty list of token ids, "
                         "or a list of non-empty token-id lists")


# ---------------------------------------------------------------- generation

class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: StrictBool = False


class SamplingRequest(OpenAIRequest):
    """Options shared by chat and text completions."""

    max_tokens: StrictInt | None = None  # range checked by the app, whose limit is configurable
    temperature: StrictFloat = Field(1.0, ge=0.0, le=2.0)
    top_p: StrictFloat = Field(1.0, ge=0.0, le=1.0)
    stop: Text | Annotated[list[Text], Field(max_length=4)] | None = None
    n: StrictInt = 1
    seed: StrictInt | None = Field(None, ge=-(2**63), lt=2**64)  # what torch.Generator.manual_seed takes
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    frequency_penalty: StrictFloat | None = Field(None, ge=-2.0, le=2.0)
    presence_penalty: StrictFloat | None = Field(None, ge=-2.0, le=2.0)
    repetition_penalty: StrictFloat | None = Field(None, gt=0.0)  # vLLM's extra; see gritkit.model.Sampler
    logit_bias: dict[str, StrictFloat] | None = None

    _unsupported = _only_neutral({"n": (1,), "logit_bias": ({}, None)})

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def penalties(self) -> dict[str, float]:
        """The penalties the request sets, as ``GritLM.generate`` takes them."""
        given = {"frequency_penalty": self.frequency_penalty, "presence_penalty": self.presence_penalty,
                 "repetition_penalty": self.repetition_penalty}
        return {name: value for name, value in given.items() if value is not None}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["system", "developer", "user", "assistant"]
    content: Text | list[TextPart]
    name: StrictStr | None = None

    def as_dict(self) -> dict[str, str]:
        """The ``{"role", "content"}`` form the model's chat template takes ("developer" is a system turn)."""
        content = self.content if isinstance(self.content, str) else "\n".join(part.text for part in self.content)
        return {"role": "system" if self.role == "developer" else self.role, "content": content}


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: StrictInt | None = None  # newer clients send this instead of max_tokens
    logprobs: StrictBool | None = None

    _unsupported_chat = _only_neutral({"logprobs": (False, None)})


class CompletionRequest(SamplingRequest):
    prompt: Text | list[Text]
    echo: StrictBool = False
    suffix: StrictStr | None = None
    best_of: StrictInt | None = None
    logprobs: StrictInt | None = None

    _unsupported_text = _only_neutral({"echo": (False,), "suffix": (None,), "best_of": (1, None), "logprobs": (None,)})

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("gritkit takes one prompt per request (a string, or a list holding one string)")
        return prompt

    def prompt_text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


# ---------------------------------------------------------------- RAG (gritkit extension)

class RagRequest(OpenAIRequest):
    query: Text = Field(min_length=1)
    k: StrictInt | None = Field(None, ge=1, le=100)  # None: RAG.answer's defaults
    cache: StrictStr | None = None  # a gritkit.rag cache mode: none, query, doc, query_doc, doc_query
    doc_cache: StrictStr | None = None  # passage states: causal, bidirectional (None: what the index holds)
    max_tokens: StrictInt | None = None
