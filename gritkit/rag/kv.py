"""Key/value segments: caches of texts run alone from position 0, joined into one DynamicCache.

GRIT's RAG caching reuses the key/value states of the embedding pass. Each text (a passage,
a query) is cached alone, starting at position 0. To put a segment after others its keys
must be re-positioned: RoPE keys are stored already rotated, ``k_p = R(p) k``, and rotations
compose, ``R(p + offset) k = R(offset) k_p``, so one more rotation by the segment's real
offset puts every key where it belongs. Values carry no position and are left as they are.
The rotation uses the model's own rotary module, so any RoPE variant it implements
(scaling, partial rotary, per-layer-type frequencies) is handled the way the model does it.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.models.llama.modeling_llama import rotate_half as llama_rotate_half

from gritkit.model import GritLM


@dataclass
class Segment:
    """Per-layer key/value states of one text, computed alone from position 0, without padding.

    ``keys[i]`` / ``values[i]`` have shape ``(kv_heads, stored_tokens, head_dim)``; ``length`` is the
    number of tokens the text occupies (a sliding-window layer may store only the last few).
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    length: int

    @classmethod
    def from_cache(cls, cache: DynamicCache, length: int, row: int = 0) -> Segment:
        """Take one row of a (possibly right-padded) cache; the padding positions are dropped."""
        keys, values = [], []
        for layer in cache.layers:
            if getattr(layer, "is_sliding", False):
                # A sliding layer keeps only its last tokens, so right padding cannot be cut off it.
                if layer.get_seq_length() != length:
                    raise ValueError("a sliding-window cache layer holds padding; cache each text alone")
                keys.append(layer.keys[row])
                values.append(layer.values[row])
            else:
                keys.append(layer.keys[row, :, :length])
                values.append(layer.values[row, :, :length])
        return cls(keys, values, length)


def cache_can_hold_padding(model: GritLM) -> bool:
    """Whether padding can be cut off every cache layer (a sliding-window layer keeps only its last tokens)."""
    return not any(getattr(layer, "is_sliding", False) for layer in DynamicCache(config=model.config).layers)


def _rotate_half(model: GritLM):
    """The model's own ``rotate_half`` (its modeling module's), so the pairing of dimensions matches."""
    return getattr(sys.modules[type(model.backbone).__module__], "rotate_half", llama_rotate_half)


def _layer_type(model: GritLM, layer_idx: int) -> str | None:
    layer_types = getattr(model.config, "layer_types", None)
    return layer_types[layer_idx] if layer_types else None


def _rotation(model: GritLM, positions: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of shape ``positions.shape + (rotary_dim,)``: the rotation by each position."""
    rotary = model.backbone.rotary_emb
    dummy = torch.zeros(1, dtype=torch.float32, device=model.device)
    if hasattr(rotary, "layer_types"):  # one frequency set per layer type (e.g. Gemma 3)
        layer_type = _layer_type(model, layer_idx)
        cos, sin = rotary(dummy, positions, layer_type)
        scaling = getattr(rotary, f"{layer_type}_attention_scaling", 1.0)
    else:
        cos, sin = rotary(dummy, positions)
        scaling = getattr(rotary, "attention_scaling", 1.0)
    return cos / scaling, sin / scaling


@torch.no_grad()  # constants: plain tensors, so cache-aware training can rotate keys that need gradients
def rope_rotation(model: GritLM, offset: int, layer_idx: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)`` of the rotation by ``offset`` positions, from the model's rotary module.

    The module folds its attention scaling (YaRN etc.) into cos/sin; the cached keys already
    carry it once, so it is divided out here to rotate without rescaling.
    """
    cos, sin = _rotation(model, torch.tensor([[offset]], device=model.device), layer_idx)
    return cos[0, 0], sin[0, 0]


def _rotate(model: GritLM, keys: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Keys ``(..., tokens, head_dim)`` rotated by ``cos``/``sin`` (broadcast over them, ``rotary_dim`` last)."""
    rotary_dim = cos.shape[-1]  # < head_dim for partial rotary: the rest carries no position
    rotated, passed = keys[..., :rotary_dim].float(), keys[..., rotary_dim:]
    rotated = (rotated * cos + _rotate_half(model)(rotated) * sin).to(keys.dtype)
    return torch.cat((rotated, passed), dim=-1) if passed.shape[-1] else rotated


def rotate_keys(model: GritLM, keys: torch.Tensor, offset: int, layer_idx: int = 0) -> torch.Tensor:
    """Move post-RoPE keys ``(..., tokens, head_dim)`` forward by ``offset`` positions."""
    if offset == 0:
        return keys
    return _rotate(model, keys, *rope_rotation(model, offset, layer_idx))


def build_cache(model: GritLM, segments: Sequence[Segment]) -> DynamicCache:
    """Concatenate segments in order into one DynamicCache, each re-positioned to its real offset.

    Generation can continue from the returned cache: its length is the sum of segment lengths.
    """
    if not segments:
        raise ValueError("build_cache needs at least one segment")
    return build_batched_cache(model, [segments])[0]


def build_batched_cache(model: GritLM, rows: Sequence[Sequence[Segment]]) -> tuple[DynamicCache, list[int]]:
    """One cache row per entry of ``rows``, each joined as :func:`build_cache` joins it, right-padded with zeros.

    Returns the cache and each row's length; a forward after it must mask the padding positions
    (attention mask 0) and give each row's tokens their own positions (``position_ids``). Each layer's
    keys are re-positioned in one rotation by a per-token offset (0 leaves a key as it is), so the
    cost does not grow with the number of segments. A sliding-window layer cannot hold padding:
    rows of different lengths are an error for such models.
    """
    if not rows or not all(rows):
        raise ValueError("build_batched_cache needs at least one segment in every row")
    layers = len(rows[0][0].keys)
    if any(len(s.keys) != layers for row in rows for s in row):
        raise ValueError("segments come from models with different numbers of layers")
    device, dtype = model.device, next(model.model.parameters()).dtype
    lengths = [sum(segment.length for segment in row) for row in rows]
    cache = DynamicCache(config=model.config)
    if len(set(lengths)) > 1 and not cache_can_hold_padding(model):
        raise ValueError("a sliding-window cache layer cannot hold padding: build one cache per row")
    rotations: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    for layer_idx in range(layers):
        # a sliding layer may store only a segment's last tokens: offsets follow what each layer stores
        stored = tuple(tuple(s.keys[layer_idx].shape[-2] for s in row) for row in rows)
        width = max(sum(row) for row in stored)
        key = (_layer_type(model, layer_idx), stored)
        if key not in rotations:
            offsets = torch.zeros(len(rows), width, dtype=torch.long)
            for row_idx, (row, counts) in enumerate(zip(rows, stored)):
                start, offset = 0, 0
                for segment, count in zip(row, counts):
                    offsets[row_idx, start:start + count] = offset
                    start, offset = start + count, offset + segment.length
            with torch.no_grad():
                rotations[key] = tuple(t[:, None] for t in _rotation(model, offsets.to(device), layer_idx))
        keys = _padded_rows([[s.keys[layer_idx].to(device, dtype) for s in row] for row in rows], width)
        values = _padded_rows([[s.values[layer_idx].to(device, dtype) for s in row] for row in rows], width)
        cache.update(_rotate(model, keys, *rotations[key]), values, layer_idx)
        layer = cache.layers[layer_idx]
        if hasattr(layer, "cumulative_length"):  # a sliding layer counts positions, not what it stores
            layer.cumulative_length = lengths[0]
    return cache, lengths


def _padded_rows(rows: list[list[torch.Tensor]], width: int) -> torch.Tensor:
    """``(rows, heads, width, head_dim)``: each row's tensors joined along tokens, zero-padded on the right."""
    joined = [torch.cat(row, dim=-2) if len(row) > 1 else row[0] for row in rows]
    if len(joined) == 1:
        return joined[0][None]
    return torch.stack([F.pad(row, (0, 0, 0, width - row.shape[-2])) for row in joined])


def drop_leading_tokens(model: GritLM, segment: Segment, count: int) -> Segment:
    """The segment without its first ``count`` tokens, its keys moved back to start at position 0."""
    if not 0 <= count <= segment.length:
        raise ValueError(f"cannot drop {count} tokens from a segment of {segment.length}")
    keys, values = [], []
    for layer_idx, (layer_keys, layer_values) in enumerate(zip(segment.keys, segment.values)):
        first_stored = segment.length - layer_keys.shape[-2]  # a sliding layer keeps only its last tokens
        cut = max(0, count - first_stored)
        keys.append(rotate_keys(model, layer_keys[..., cut:, :].float(), -count, layer_idx).to(layer_keys.dtype))
        values.append(layer_values[..., cut:, :])
    return Segment(keys, values, segment.length - count)


def causal_segment(model: GritLM, prefix_ids: Sequence[int], token_ids: Sequence[int]) -> Segment:
    """Causal key/value states of ``token_ids`` run after ``prefix_ids``, without the prefix's own states.

    Under causal attention the prefix's states do not depend on what follows it, so one copy of
    them (computed once) serves every text; the returned segment starts at position 0 and is put
    after that copy by :func:`build_cache`.
    """
    ids = [*prefix_ids, *token_ids]
    cache, _ = model.prefill(ids)
    return drop_leading_tokens(model, Segment.from_cache(cache, len(ids)), len(prefix_ids))
