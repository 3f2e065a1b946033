"""Segmentation losses: BCE + soft Dice (binary) or cross-entropy + soft Dice (multi-class),
with label 255 ignored and optional deep-supervision outputs weighted 1, 1/2, 1/4, ..."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = 255


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, valid: torch.Tensor,
                   eps: float = 1.0) -> torch.Tensor:
    """1 - Dice per image and channel, averaged. probs/onehot (B, K, H, W), valid (B, 1, H, W)."""
    probs, onehot = probs * valid, onehot * valid
    inter = (probs * onehot).sum((2, 3))
    denom = probs.sum((2, 3)) + onehot.sum((2, 3))
    return (1.0 - (2.0 * inter + eps) / (denom + eps)).mean()


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (B, K, H, W) with K = 1 (binary) or classes + background; labels (B, H, W)."""
    logits = logits.float()
    valid = (labels != IGNORE).unsqueeze(1).float()
    if logits.shape[1] == 1:
        target = (labels == 1).unsqueeze(1).float()
        bce = F.binary_cross_entropy_with_logits(logits, target, weight=valid)
        return bce + soft_dice_loss(torch.sigmoid(logits), target, valid)
    # mean over valid pixels; a batch with none (all ignored) contributes 0, not NaN
    ce = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum") / \
        valid.sum().clamp(min=1)
    safe = labels.masked_fill(labels == IGNORE, 0)
    onehot = F.one_hot(safe, logits.shape[1]).permute(0, 3, 1, 2).float()
    dice = soft_dice_loss(torch.softmax(logits, 1)[:, 1:], onehot[:, 1:], valid)
    return ce + dice


def deep_supervision_loss(outputs: torch.Tensor | list[torch.Tensor], labels: torch.Tensor
                          ) -> torch.Tensor:
    if not isinstance(outputs, list):
        return segmentation_loss(outputs, labels)
    weights = [0.5**i for i in range(len(outputs))]
    total = sum(w * segmentation_loss(o, labels) for w, o in zip(weights, outputs, strict=True))
    return total / sum(weights)
