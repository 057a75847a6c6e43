"""Write a gritkit model as one GGUF file that llama.cpp, llama-cpp-python and Ollama load.

    gritkit export gguf default gritsmol.f16.gguf            # the default, its adapter merged
    gritkit export gguf runs/my-adapter my.q8_0.gguf --dtype q8_0

Any spec ``GritLM.from_pretrained`` takes works, as long as the decoder is Llama-shaped (llama,
mistral). The weights are written under llama.cpp's tensor names, with the query/key rows put
back in llama.cpp's rotary layout (transformers undoes that layout when it reads a GGUF). The
tokenizer metadata is copied from the GGUF the model was loaded from (the default, a ``.gguf``
spec, an adapter on one), otherwise built from the Hugging Face tokenizer: byte-level BPE (llama.cpp's
``gpt2`` tokenizer) or SentencePiece BPE with byte fallback (its ``llama`` tokenizer; Llama 2, Mistral).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import gguf
import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from gritkit import loading

if TYPE_CHECKING:
    from gritkit.model import GritLM

GgufDtype = Literal["f32", "f16", "q8_0"]
DTYPES: tuple[GgufDtype, ...] = ("f32", "f16", "q8_0")
# llama.cpp runs both as its "llama" architecture; Mistral differs only by its sliding window.
SUPPORTED_MODEL_TYPES = ("llama", "mistral")
FILE_TYPES = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
              "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}

logger = logging.getLogger(__name__)


class GgufExportError(ValueError):
    """The model cannot be written as a GGUF file that llama.cpp would run the same way."""


def export_gguf(model: GritLM | str | os.PathLike | None, output: str | os.PathLike, *,
                dtype: GgufDtype = "f16") -> Path:
    """Write ``model`` (a spec such as ``"default"``, or a loaded :class:`GritLM`) to ``output``.

    ``dtype``: ``f32`` (exact), ``f16`` or ``q8_0`` for the matrices; norms always stay f32, as
    llama.cpp wants. The file is written beside ``output`` and renamed into place, so a failed
    export never leaves half a file under that name.
    """
    if dtype not in DTYPES:
        raise GgufExportError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if model is None or isinstance(model, (str, os.PathLike)):
        spec = model
        hf_model, tokenizer = loading.load(spec, dtype=torch.float32, device="cpu")
    else:
        spec, hf_model, tokenizer = model.name, model.model, model.tokenizer
        if hasattr(hf_model, "merge_and_unload"):
            raise GgufExportError("merge the PEFT adapter first (load with merge_adapter=True)")
    config = hf_model.config
    _check_architecture(config)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.with_name(f".{output.name}.partial")
    writer = gguf.GGUFWriter(staging, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
    try:
        _add_model_metadata(writer, config, name=_model_name(spec), dtype=dtype)
        source = loading.source_gguf(spec)
        if source is not None and _token_count(source) == config.vocab_size:
            _copy_tokenizer_metadata(writer, source)
        else:
            _add_hf_tokenizer_metadata(writer, tokenizer, config.vocab_size)
        for name, array, raw_dtype in _gguf_tensors(hf_model, dtype):
            writer.add_tensor(name, array, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.replace(staging, output)
    finally:
        staging.unlink(missing_ok=True)
    return output


def _model_name(spec: object) -> str:
    spec = str(spec or loading.DEFAULT_SPEC)
    return "gritsmol (SmolLM2-135M-Instruct + GRIT adapter)" if spec == loading.DEFAULT_SPEC else Path(spec).name


def _check_architecture(config) -> None:
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise GgufExportError(f"GGUF export supports {', '.join(SUPPORTED_MODEL_TYPES)} decoders, "
                              f"not {config.model_type!r}")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise GgufExportError("GGUF export does not support attention or MLP biases")
    rope_type = _rope_parameters(config).get("rope_type", "default")
    if rope_type not in ("default", "linear"):
        raise GgufExportError(f"GGUF export supports default and linear RoPE, not {rope_type!r}")
    window = getattr(config, "sliding_window", None)
    if window and window < config.max_position_embeddings:
        logger.warning("llama.cpp's llama architecture has no sliding window: attention over more than %d "
                       "tokens will differ from transformers'", window)


def _rope_parameters(config) -> dict:
    parameters = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    parameters.setdefault("rope_theta", getattr(config, "rope_theta", 10000.0))
    return parameters


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def _add_model_metadata(writer: gguf.GGUFWriter, config, *, name: str, dtype: GgufDtype) -> None:
    rope = _rope_parameters(config)
    writer.add_name(name)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads or config.num_attention_heads)
    writer.add_key_length(_head_dim(config))
    writer.add_value_length(_head_dim(config))
    writer.add_rope_dimension_count(_head_dim(config))
    writer.add_rope_freq_base(float(rope["rope_theta"]))
    if rope.get("rope_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(rope["factor"]))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(FILE_TYPES[dtype])


# ------------------------------------------------------------ tokenizer


def _token_count(path: Path) -> int:
    return len(gguf.GGUFReader(path).fields["tokenizer.ggml.tokens"].data)


def _copy_tokenizer_metadata(writer: gguf.GGUFWriter, source: Path) -> None:
    """Every ``tokenizer.*`` key of ``source`` as it is: vocabulary, merges, special ids, chat template."""
    for key, field in gguf.GGUFReader(source).fields.items():
        if key.startswith("tokenizer."):
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(key, field.contents(), field.types[0], sub_type=sub_type)


def _add_hf_tokenizer_metadata(writer: gguf.GGUFWriter, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
    """llama.cpp's vocabulary from a Hugging Face fast tokenizer: ``gpt2`` for byte-level BPE,
    ``llama`` for SentencePiece BPE with byte fallback."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else {}
    kind = _tokenizer_kind(spec)
    id_to_token = {index: token for token, index in tokenizer.get_vocab().items()}
    if len(id_to_token) > vocab_size:
        raise GgufExportError(f"the tokenizer has {len(id_to_token)} tokens, the model's embedding {vocab_size}")
    tokens = [id_to_token.get(index, f"[PAD{index}]") for index in range(vocab_size)]
    types = [_token_type(tokenizer, id_to_token, index, kind) for index in range(vocab_size)]
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in spec["model"].get("merges", [])]
    writer.add_tokenizer_model(kind)
    if kind == "gpt2":
        writer.add_tokenizer_pre(_pre_tokenizer_name(spec.get("pre_tokenizer")))
    else:
        sentencepiece = _sentencepiece_pieces(tokenizer, tokens)
        if sentencepiece is not None:  # the model's own scores and types, as llama.cpp's converter takes them
            for index, piece in enumerate(sentencepiece):
                types[index] = gguf.TokenType(piece.type)  # SentencePiece numbers its piece types as GGUF does
            scores = [piece.score for piece in sentencepiece] + [-1000.0] * (vocab_size - len(sentencepiece))
        else:
            scores = _scores_from_merges(tokens, merges)
        writer.add_token_scores(scores)
        # Whether text gets SentencePiece's leading "▁", read off the tokenizer's behaviour.
        first = tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False)["input_ids"])[0]
        writer.add_add_space_prefix(first.startswith("▁"))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    # llama.cpp's SentencePiece tokenizer merges by score; the merges let transformers' GGUF reader
    # rebuild the tokenizer exactly instead of deriving merges from the scores.
    writer.add_token_merges(merges)
    for kind_name in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind_name}_token_id", None)
        if token_id is not None:
            getattr(writer, f"add_{kind_name}_token_id")(token_id)
    # Whether the tokenizer adds BOS/EOS, read off its behaviour rather than its many config flags.
    with_specials = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    writer.add_add_bos_token(len(with_specials) > len(plain) and with_specials[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(len(with_specials) > len(plain) and with_specials[-1] == tokenizer.eos_token_id)
    if isinstance(tokenizer.chat_template, str):
        writer.add_chat_template(tokenizer.chat_template)


TokenizerKind = Literal["gpt2", "llama"]
SUPPORTED_TOKENIZERS = ("byte-level BPE (GPT-2, Llama 3, SmolLM2) and SentencePiece BPE with byte fallback "
                        "(Llama 2, Mistral 7B, GritLM-7B)")


def _tokenizer_kind(spec: dict) -> TokenizerKind:
    """llama.cpp's tokenizer model for a ``tokenizer.json``: ``gpt2`` or ``llama`` (SentencePiece)."""
    model = spec.get("model") or {}
    decoders = _step_types(spec.get("decoder"))
    if model.get("type") == "BPE" and not model.get("byte_fallback") and decoders == ["ByteLevel"]:
        return "gpt2"
    uses_metaspace = "Metaspace" in _step_types(spec.get("pre_tokenizer")) or any(
        step.get("type") == "Replace" and step.get("content") == "▁" for step in _steps(spec.get("normalizer")))
    if model.get("type") == "BPE" and model.get("byte_fallback") and uses_metaspace:
        return "llama"
    if model.get("type") == "Unigram":
        found = ("a Unigram model (llama.cpp's SentencePiece tokenizer merges pieces by score as BPE does, "
                 "so it would split text differently)")
    elif model.get("type"):
        found = f"a {model['type']} model that is neither"
    else:
        found = "not a fast (tokenizers) tokenizer"
    raise GgufExportError(f"GGUF export builds tokenizer metadata for {SUPPORTED_TOKENIZERS}; this one is {found}")


def _steps(component: dict | None) -> list[dict]:
    """The steps of a tokenizer.json component (normalizer, pre-tokenizer, decoder), sequence or not."""
    if not component:
        return []
    nested = component.get("normalizers") or component.get("pretokenizers") or component.get("decoders")
    return [step for part in nested for step in _steps(part)] if nested else [component]


def _step_types(component: dict | None) -> list[str]:
    return [step.get("type") for step in _steps(component)]


def _token_type(tokenizer: PreTrainedTokenizerBase, id_to_token: dict[int, str], index: int,
                kind: TokenizerKind) -> gguf.TokenType:
    if index not in id_to_token:  # rows the embedding has but the tokenizer never produces
        return gguf.TokenType.UNUSED
    if kind == "llama" and index == tokenizer.unk_token_id:
        return gguf.TokenType.UNKNOWN
    if kind == "llama" and _BYTE_PIECE.fullmatch(id_to_token[index]):
        return gguf.TokenType.BYTE
    added = tokenizer.added_tokens_decoder
    if index in added:
        return gguf.TokenType.CONTROL if added[index].special else gguf.TokenType.USER_DEFINED
    return gguf.TokenType.NORMAL


_BYTE_PIECE = re.compile(r"<0x[0-9A-F]{2}>")


def _sentencepiece_pieces(tokenizer: PreTrainedTokenizerBase, tokens: list[str]) -> list | None:
    """The pieces (text, score, type) of the tokenizer's own SentencePiece BPE model, if it has one
    beside it that spells the same vocabulary and the ``sentencepiece`` package can read it."""
    candidates = [getattr(tokenizer, "vocab_file", None), Path(tokenizer.name_or_path or ".") / "tokenizer.model"]
    path = next((Path(candidate) for candidate in candidates if candidate and Path(candidate).is_file()), None)
    if path is None:
        return None
    try:
        from sentencepiece import sentencepiece_model_pb2
    except ImportError:
        logger.info("sentencepiece is not installed: token scores come from tokenizer.json's merges")
        return None
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(path.read_bytes())
    pieces = list(model.pieces)
    if model.trainer_spec.model_type != model.trainer_spec.BPE or [piece.piece for piece in pieces] != tokens[:len(pieces)]:
        logger.warning("%s is not a BPE model of this tokenizer's vocabulary: token scores come from "
                       "tokenizer.json's merges", path)
        return None
    return pieces


def _scores_from_merges(tokens: list[str], merges: list[str]) -> list[float]:
    """SentencePiece-style scores from BPE merge ranks: the earlier a token is merged, the higher.

    llama.cpp's SentencePiece tokenizer repeatedly joins the adjacent pair whose joined text has the
    highest score, which is BPE's lowest merge rank when each token scores minus its first merge's rank.
    """
    rank: dict[str, int] = {}
    for position, merge in enumerate(merges):
        rank.setdefault(merge.replace(" ", ""), position)
    never_merged = -float(len(merges) + 1)
    return [-float(rank[token]) if token in rank else never_merged for token in tokens]


_LLAMA3_PATTERN_START = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"


def _pre_tokenizer_name(pre_tokenizer: dict | None) -> str:
    """llama.cpp's name for how the text is split before BPE (``tokenizer.ggml.pre``).

    Recognised from the structure of the tokenizer.json ``pre_tokenizer``; anything else gets
    llama.cpp's ``default`` split, with a warning, since it can then tokenise differently.
    """
    steps = (pre_tokenizer or {}).get("pretokenizers") or ([pre_tokenizer] if pre_tokenizer else [])
    kinds = [step.get("type") for step in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and str(steps[0].get("pattern", {}).get("Regex", "")).startswith(_LLAMA3_PATTERN_START):
        return "llama-bpe"
    logger.warning("unrecognised pre-tokenizer %s: llama.cpp will split text its default way", kinds)
    return "default"


# ------------------------------------------------------------ tensors


def _to_llama_cpp_rotary(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Query/key rows from transformers' half-split rotary layout to llama.cpp's interleaved one."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _gguf_tensors(model: PreTrainedModel, dtype: GgufDtype) -> Iterator[tuple[str, np.ndarray, gguf.GGMLQuantizationType | None]]:
    """(llama.cpp name, data, raw type or None) for every weight, converted to ``dtype``."""
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, weight in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the output projection from token_embd when output.weight is absent
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise GgufExportError(f"no llama.cpp tensor name for {hf_name}")
        weight = weight.detach().float()
        if name.endswith("attn_q.weight"):
            weight = _to_llama_cpp_rotary(weight, config.num_attention_heads)
        elif name.endswith("attn_k.weight"):
            weight = _to_llama_cpp_rotary(weight, config.num_key_value_heads or config.num_attention_heads)
        array = weight.numpy()
        if array.ndim == 1 or dtype == "f32":
            yield name, array, None
        elif dtype == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0] == 0:
            yield name, gguf.quants.quantize(array, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
        else:  # f16, and q8_0 rows that are not whole 32-value blocks
            yield name, array.astype(np.float16), None
