"""Training losses for alignment networks (torch).

All take L2-normalised rows. ``aligned`` are runtime chunks mapped by the network,
``targets`` the enrollment-model embeddings (through the target tower for two-tower
models) of the same chunks, ``labels`` integer speaker ids.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cosine_fidelity(aligned: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ``1 - cos`` between each aligned chunk and its own enrollment embedding."""
    loss = 1.0 - (aligned * targets).sum(dim=1)
    return _weighted_mean(loss, weights)


def mse_fidelity(aligned_raw: torch.Tensor, targets_raw: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error between un-normalised outputs (per row, summed over dims)."""
    return _weighted_mean(((aligned_raw - targets_raw) ** 2).sum(dim=1), weights)


def supervised_contrastive(anchors: torch.Tensor, candidates: torch.Tensor, labels: torch.Tensor,
                           temperature: float, weights: torch.Tensor | None = None,
                           exclude_self: bool = False) -> torch.Tensor:
    """Cross-model SupCon / multi-positive InfoNCE.

    Row i of ``anchors`` is scored against every row of ``candidates`` (same batch order);
    the positives are candidates of the same speaker (the paired chunk included unless
    ``exclude_self``). Loss = - mean over positives of the log-softmax over candidates.
    """
    logits = anchors @ candidates.T / temperature
    positives = labels[:, None] == labels[None, :]
    if exclude_self:
        eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        positives = positives & ~eye
        logits = logits.masked_fill(eye, float("-inf"))
    log_prob = torch.log_softmax(logits, dim=1)
    n_pos = positives.sum(dim=1)
    keep = n_pos > 0
    per_anchor = -(log_prob.masked_fill(~positives, 0.0).sum(dim=1)[keep] / n_pos[keep])
    return _weighted_mean(per_anchor, None if weights is None else weights[keep])


def prototype_classification(anchors: torch.Tensor, prototypes: torch.Tensor, labels: torch.Tensor,
                             scale: float, margin: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Global speaker classification against (enrollment-space) speaker prototypes with an
    additive angular margin (AAM-softmax with fixed or tower-mapped class centres): the
    "global" half of GLSC-SDR, the in-batch contrastive term being the "local" half."""
    cosine = anchors @ prototypes.T
    theta = torch.acos(cosine.clamp(-1 + 1e-6, 1 - 1e-6))
    target_logit = torch.cos(theta.gather(1, labels[:, None]) + margin)
    logits = cosine.scatter(1, labels[:, None], target_logit) * scale
    return _weighted_mean(F.cross_entropy(logits, labels, reduction="none"), weights)


def _weighted_mean(values: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    if weights is None:
        return values.mean()
    return (values * weights).sum() / weights.sum().clamp_min(1e-12)
