"""Segmentation losses: near zero for perfect logits, ignore label 255, deep supervision."""

from __future__ import annotations

import pytest
import torch

from medrefine.training.losses import IGNORE, deep_supervision_loss, segmentation_loss


def _labels(num_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes + 1, (2, 16, 16), generator=g)


def _perfect_logits(labels, num_classes):
    if num_classes == 1:
        return (labels == 1).float().unsqueeze(1) * 40 - 20
    return (
        torch.nn.functional.one_hot(labels.clamp(max=num_classes), num_classes + 1)
        .permute(0, 3, 1, 2)
        .float()
        * 40
        - 20
    )


@pytest.mark.parametrize("num_classes", [1, 3])
def test_perfect_logits_give_near_zero(num_classes):
    labels = _labels(num_classes)
    assert segmentation_loss(_perfect_logits(labels, num_classes), labels).item() < 1e-3
    wrong = -_perfect_logits(labels, num_classes)
    assert segmentation_loss(wrong, labels).item() > 1.0


@pytest.mark.parametrize("num_classes", [1, 3])
def test_ignored_pixels_do_not_count(num_classes):
    labels = _labels(num_classes)
    logits = _perfect_logits(labels, num_classes)
    ignored = torch.zeros_like(labels, dtype=torch.bool)
    ignored[:, :5] = True
    labels = labels.masked_fill(ignored, IGNORE)
    base = segmentation_loss(logits, labels)
    assert base.item() < 1e-3
    garbage = logits.clone()
    garbage[ignored.unsqueeze(1).expand_as(garbage)] = 17.0  # nonsense where ignored
    assert segmentation_loss(garbage, labels).item() == pytest.approx(base.item(), abs=1e-6)


@pytest.mark.parametrize("k", [1, 3])
def test_a_fully_ignored_batch_gives_zero_not_nan(k):
    labels = torch.full((1, 8, 8), IGNORE)
    loss = segmentation_loss(torch.randn(1, k, 8, 8), labels)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)


def test_loss_has_gradients():
    labels = _labels(1)
    logits = torch.zeros(2, 1, 16, 16, requires_grad=True)
    segmentation_loss(logits, labels).backward()
    assert logits.grad.abs().sum() > 0


def test_deep_supervision_weights():
    labels = _labels(1)
    good = _perfect_logits(labels, 1)
    bad = -good
    single = segmentation_loss(bad, labels)
    assert deep_supervision_loss(bad, labels) == single
    # weights 1, 1/2, 1/4 normalised: a bad auxiliary output counts less than a bad main one
    aux_bad = deep_supervision_loss([good, good, bad], labels)
    main_bad = deep_supervision_loss([bad, good, good], labels)
    assert aux_bad.item() == pytest.approx(single.item() * 0.25 / 1.75, rel=1e-3)
    assert main_bad.item() == pytest.approx(single.item() / 1.75, rel=1e-3)
