"""The two GRIT losses: InfoNCE over embeddings and next-token cross-entropy on assistant tokens.

GRIT (Muennighoff et al., 2024, https://arxiv.org/abs/2402.09906) sums both:
``loss = w_emb * info_nce + w_gen * next_token``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from gritkit.training.data import IGNORE_INDEX


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every process (rank order); only this process's part keeps its graph.

    Each process gets the gradient of the (identical) global loss w.r.t. its own rows; scale that loss
    by the world size before backward so the data-parallel gradient average gives the full gradient.
    """
    if world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    dist.all_gather(parts, tensor.detach().contiguous())
    parts[dist.get_rank()] = tensor
    return torch.cat(parts)


def info_nce_loss(queries: torch.Tensor, passages: torch.Tensor, *, temperature: float = 0.02,
                  gather_across_processes: bool = False,
                  groups: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of each query against every passage in the batch; returns ``(loss, scores)``.

    ``passages`` holds one group per query, ``[positive, negative_1, ..., negative_k]``, in query order,
    so query ``i``'s positive is row ``i * group_size``; all other rows (hard negatives and other
    queries' passages) are its negatives. Scores are cosine similarities divided by ``temperature``.
    With ``gather_across_processes`` the queries and passages of all processes form one batch.
    ``groups`` (one integer per query, e.g. a class label) drops other queries' positives of the same
    group from a query's negatives: same-intent or same-image pairs are not negatives of each other.

    Example::

        loss, scores = info_nce_loss(model.embed_batch(q), model.embed_batch(p), temperature=0.02)
    """
    if len(passages) % len(queries):
        raise ValueError(f"{len(passages)} passages is not a whole number of groups for {len(queries)} queries")
    group_size = len(passages) // len(queries)
    if gather_across_processes:
        queries, passages = gather_with_grad(queries), gather_with_grad(passages)
        groups = gather_with_grad(groups) if groups is not None else None
    scores = F.normalize(queries.float(), dim=-1) @ F.normalize(passages.float(), dim=-1).T / temperature
    targets = torch.arange(len(queries), device=scores.device) * group_size
    if groups is not None:
        groups = groups.to(scores.device)
        same = groups[:, None] == groups[None, :]
        same.fill_diagonal_(False)  # a query's own positive stays its target
        positives = torch.zeros_like(scores, dtype=torch.bool)
        positives[:, ::group_size] = same
        scores = scores.masked_fill(positives, float("-inf"))
    return F.cross_entropy(scores, targets), scores


def cosent_loss(first: torch.Tensor, second: torch.Tensor, scores: torch.Tensor, *, scale: float = 20.0,
                gather_across_processes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """CoSENT (Su, 2022) on graded pairs; returns ``(loss, similarities)`` (cosine of every first vs every second).

    For every two pairs where ``scores[i] > scores[j]``, pair ``i``'s cosine should exceed pair ``j``'s:
    ``loss = log(1 + sum exp(scale * (cos_j - cos_i)))``. Only the order of the scores matters, so STS
    labels (0-5) need no rescaling. With ``gather_across_processes`` all processes' pairs are compared.
    """
    if gather_across_processes:
        first, second, scores = gather_with_grad(first), gather_with_grad(second), gather_with_grad(scores)
    similarities = F.normalize(first.float(), dim=-1) @ F.normalize(second.float(), dim=-1).T
    cosines = similarities.diagonal() * scale
    differences = cosines[None, :] - cosines[:, None]  # [i, j] = cos_j - cos_i
    scores = scores.to(cosines.device)
    ranked = scores[:, None] > scores[None, :]
    zero = torch.zeros(1, device=cosines.device, dtype=cosines.dtype)
    return torch.logsumexp(torch.cat([zero, differences[ranked]]), dim=0), similarities


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, *, loss_type: str = "mixed",
                    num_tokens: float | None = None, num_samples: int | None = None) -> torch.Tensor:
    """Cross-entropy of each next token whose label is not IGNORE_INDEX.

    ``loss_type``: ``"mixed"``/``"token"`` divide the summed token losses by ``num_tokens``, ``"sample"``
    averages each sequence's mean token loss over ``num_samples``. Both default to this batch's own
    counts; pass the whole step's counts when a batch is split in chunks. The trainer passes the
    process's token count for ``mixed`` (GritLM's default: token mean per device, devices averaged) and
    the all-process count over the world size for ``token`` (every token of the step weighs the same).
    """
    labels = labels[:, 1:].to(logits.device)
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(),
                                ignore_index=IGNORE_INDEX, reduction="none").view(labels.shape)
    trained = labels != IGNORE_INDEX
    if loss_type == "sample":
        per_sample = per_token.sum(1) / trained.sum(1).clamp(min=1)
        return per_sample.sum() / (num_samples or len(labels))
    if loss_type not in ("mixed", "token"):
        raise ValueError(f"loss_type must be 'mixed', 'token' or 'sample', not {loss_type!r}")
    return per_token.sum() / (num_tokens if num_tokens is not None else trained.sum().clamp(min=1))
