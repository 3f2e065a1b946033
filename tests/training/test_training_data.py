"""Training data: pairing by stem, manifest and seeded splits, label maps, the dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from medrefine.errors import ConfigError, InputError
from medrefine.preprocess import PreprocessConfig
from medrefine.training.data import (
    AugmentConfig,
    SegmentationDataset,
    augment_pair,
    cross_val_folds,
    find_pairs,
    read_label_map,
    split_pairs,
)


@pytest.fixture
def folder(tmp_path, make_disks):
    return make_disks(tmp_path / "data", n=10, size=32)


def test_find_pairs_by_stem(folder):
    (folder / "images" / "orphan.png").write_bytes((folder / "images" / "case_00.png").read_bytes())
    (folder / "images" / "notes.txt").write_text("not an image")
    pairs = find_pairs(folder)
    assert sorted(pairs) == [f"case_{i:02d}" for i in range(10)]
    p = pairs["case_03"]
    assert p.image == folder / "images" / "case_03.png"
    assert p.mask == folder / "masks" / "case_03.png"


def test_find_pairs_other_mask_dir_and_missing_folders(folder, tmp_path):
    (folder / "masks").rename(folder / "labels")
    with pytest.raises(InputError, match="masks"):
        find_pairs(folder)
    assert len(find_pairs(folder, mask_dir="labels")) == 10
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    (empty / "masks").mkdir()
    with pytest.raises(InputError, match="no image/mask pairs"):
        find_pairs(empty)


def test_seeded_split_without_manifest(folder):
    pairs = find_pairs(folder)
    split = split_pairs(folder, pairs, seed=0)
    sizes = {k: len(v) for k, v in split.items()}
    assert sizes == {"train": 8, "val": 1, "test": 1}
    stems = [p.stem for v in split.values() for p in v]
    assert sorted(stems) == sorted(pairs)  # a partition: nothing lost, nothing twice
    again = split_pairs(folder, pairs, seed=0)
    assert {k: [p.stem for p in v] for k, v in again.items()} == {
        k: [p.stem for p in v] for k, v in split.items()
    }
    other = split_pairs(folder, pairs, seed=1)
    assert [p.stem for p in other["train"]] != [p.stem for p in split["train"]]


def test_split_from_manifest(folder):
    manifest = {
        "split": {
            "train": ["case_00", "case_01", "case_02", "missing_case"],
            "val": ["case_05"],
            "test": ["case_09"],
        }
    }
    (folder / "manifest.json").write_text(json.dumps(manifest))
    split = split_pairs(folder, find_pairs(folder), seed=123)
    assert [p.stem for p in split["train"]] == ["case_00", "case_01", "case_02"]
    assert [p.stem for p in split["val"]] == ["case_05"]
    assert [p.stem for p in split["test"]] == ["case_09"]


def test_manifest_without_split_falls_back(folder):
    (folder / "manifest.json").write_text(json.dumps({"name": "disks"}))
    split = split_pairs(folder, find_pairs(folder))
    assert len(split["train"]) == 8


def test_too_few_pairs(tmp_path, make_disks):
    folder = make_disks(tmp_path / "d", n=2, size=32)
    with pytest.raises(InputError, match="at least 3"):
        split_pairs(folder, find_pairs(folder))


def test_layered_mask_dir_stacks_binary_folders_into_a_label_map(folder):
    """``masks_lung+masks``: label 1 from the first folder, 2 from the second on top (the CT
    infection data set keeps lungs and infection in two binary folders)."""
    inner = folder / "inner"
    inner.mkdir()
    for path in sorted((folder / "masks").iterdir()):
        disk = np.asarray(Image.open(path)) > 0
        ys, xs = np.nonzero(disk)
        core = np.zeros_like(disk)
        core[ys.min() + 3:ys.max() - 2, xs.min() + 3:xs.max() - 2] = True
        Image.fromarray((core & disk).astype(np.uint8) * 255).save(inner / path.name)
    (inner / "case_09.png").unlink()  # a case missing from one layer is skipped
    pairs = find_pairs(folder, "masks+inner")
    assert len(pairs) == 9
    pair = pairs["case_03"]
    assert pair.mask == (folder / "masks" / "case_03.png", folder / "inner" / "case_03.png")
    assert pair.files == (pair.image, *pair.mask)
    labels = read_label_map(pair.mask, 2)
    outer = np.asarray(Image.open(pair.mask[0])) > 0
    core = np.asarray(Image.open(pair.mask[1])) > 0
    assert labels.dtype == np.uint8 and set(np.unique(labels)) == {0, 1, 2}
    np.testing.assert_array_equal(labels == 2, core)
    np.testing.assert_array_equal(labels == 1, outer & ~core)
    np.testing.assert_array_equal(read_label_map(pair.mask, 1), outer)  # binary: the union
    np.testing.assert_array_equal(read_label_map(pair.mask, 1, (2,)), core)
    for bad in ("masks+masks", "masks+", "+inner"):
        with pytest.raises(ConfigError, match="mask_dir"):
            find_pairs(folder, bad)
    with pytest.raises(InputError, match="nope"):
        find_pairs(folder, "masks+nope")


def test_read_label_map(tmp_path):
    labels = np.zeros((8, 8), np.uint8)
    labels[2:4, 2:4] = 1
    labels[5:7, 5:7] = 2
    labels[0, 0] = 9
    Image.fromarray(labels).save(tmp_path / "multi.png")
    got = read_label_map(tmp_path / "multi.png", 2)
    assert got.dtype == np.uint8
    assert got[3, 3] == 1 and got[6, 6] == 2 and got[0, 0] == 255 and got[1, 1] == 0
    # binary: 0/255 and 0/1 masks both map to {0, 1}
    Image.fromarray(labels.astype(bool).astype(np.uint8) * 255).save(tmp_path / "b255.png")
    Image.fromarray(labels.astype(bool).astype(np.uint8)).save(tmp_path / "b1.png")
    for name in ("b255.png", "b1.png"):
        np.testing.assert_array_equal(read_label_map(tmp_path / name, 1), labels > 0)


def test_dataset_items(folder):
    pairs = list(find_pairs(folder).values())[:4]
    pre = PreprocessConfig(size=(32, 32), channels=1)
    plain = SegmentationDataset(pairs, pre, 1, augment=None)
    image01, labels = plain[0]
    assert image01.shape == (1, 32, 32) and image01.dtype == torch.float32
    assert labels.shape == (32, 32) and labels.dtype == torch.int64
    assert 0 <= image01.min() and image01.max() <= 1
    assert set(labels.unique().tolist()) == {0, 1}
    # without augmentation the label is the mask file, and the disk is the bright part
    mask = read_label_map(pairs[0].mask, 1)
    np.testing.assert_array_equal(labels.numpy(), mask)
    assert image01[0][labels == 1].mean() > image01[0][labels == 0].mean() + 0.2
    aug = SegmentationDataset(pairs, pre, 1, AugmentConfig())
    assert aug.cache_size == (40, 40)
    image01, labels = aug[1]
    assert image01.shape == (1, 32, 32) and labels.shape == (32, 32)


def test_augment_pair_moves_image_and_mask_together():
    rng = np.random.default_rng(0)
    labels = np.zeros((40, 40), np.uint8)
    labels[10:25, 12:30] = 1
    image01 = labels[None].astype(np.float32)  # the image is the mask
    aug = AugmentConfig(brightness=0, contrast=0, gamma=0, noise_std=0)
    for _ in range(5):
        img, lab = augment_pair(image01, labels, (32, 32), aug, rng)
        assert img.shape == (1, 32, 32) and lab.shape == (32, 32)
        assert lab.dtype == np.uint8 and set(np.unique(lab)) <= {0, 1}
        agree = ((img[0] > 0.5) == (lab == 1)).mean()
        assert agree > 0.97


def test_augment_config_check():
    with pytest.raises(ConfigError):
        AugmentConfig(scale=(1.2, 0.8))
    for bad in ({"jpeg_quality": (0, 90)}, {"jpeg_quality": (90, 40)}, {"downscale": 1.0},
                {"border": "wrap"}, {"hue_deg": -1}):
        with pytest.raises(ConfigError):
            AugmentConfig(**bad)


@pytest.mark.parametrize("channels", [1, 3])
def test_archive_shift_augmentation_keeps_mask_aligned_and_range(channels):
    """Aspect, colour, blur, resolution and JPEG changes: the image stays in [0, 1] with its
    layout, and the mask still covers the bright square the image shows."""
    rng = np.random.default_rng(1)
    labels = np.zeros((80, 80), np.uint8)
    labels[20:50, 25:60] = 1
    image01 = np.repeat(labels[None].astype(np.float32), channels, 0) * 0.8 + 0.1
    aug = AugmentConfig(brightness=0, contrast=0, gamma=0, noise_std=0, aspect=0.5, hue_deg=30,
                        saturation=0.5, blur_sigma=1.0, downscale=0.5, jpeg_quality=(40, 90),
                        border="constant")
    changed = 0
    for _ in range(8):
        img, lab = augment_pair(image01, labels, (64, 64), aug, rng)
        assert img.shape == (channels, 64, 64) and img.dtype == np.float32
        assert 0.0 <= img.min() and img.max() <= 1.0
        agree = ((img.mean(0) > 0.45) == (lab == 1)).mean()
        assert agree > 0.93
        fg = lab == 1
        changed += abs(fg.sum() / max((~fg).sum(), 1) - 30 * 35 / (80 * 80 - 30 * 35)) > 0.01
    assert changed  # scale/aspect really moved the mask
    # constant border: outside the moved image is black, not mirrored content
    img, _ = augment_pair(image01, labels, (64, 64),
                          AugmentConfig(scale=(0.5, 0.5), rotate_deg=0, translate=0,
                                        brightness=0, contrast=0, gamma=0, noise_std=0,
                                        hflip=False, vflip=False, border="constant"), rng)
    assert img[:, :4, :4].max() == 0.0


def test_synthetic_fixture_folder(disk_data):
    assert len(find_pairs(disk_data)) == 12


def test_cross_val_folds_partition_the_cases(folder):
    pairs = list(find_pairs(folder).values())
    folds = cross_val_folds(pairs, 3, seed=0)
    assert set(folds) == {p.stem for p in pairs}
    sizes = np.bincount(list(folds.values()))
    assert sizes.tolist() == [4, 3, 3]  # 10 cases dealt into 3 folds
    assert cross_val_folds(pairs[::-1], 3, seed=0) == folds  # order of the list is irrelevant
    assert cross_val_folds(pairs, 3, seed=1) != folds  # the seed reshuffles


@pytest.mark.parametrize("k", [1, 11])
def test_cross_val_folds_refuses_impossible_k(folder, k):
    with pytest.raises(ConfigError, match="fold"):
        cross_val_folds(list(find_pairs(folder).values()), k)


def test_mask_labels_pick_one_class_of_a_label_map(tmp_path):
    """mask_labels: the foreground of a binary model is those label values (e.g. label 2 of
    masks_multiclass); every other label, lungs included, is background."""
    labels = np.zeros((20, 30), np.uint8)
    labels[2:8, 3:9] = 1
    labels[10:14, 5:25] = 2
    Image.fromarray(labels).save(tmp_path / "m.png")
    picked = read_label_map(tmp_path / "m.png", 1, (2,))
    assert picked.dtype == np.uint8 and np.array_equal(picked, (labels == 2).astype(np.uint8))
    both = read_label_map(tmp_path / "m.png", 1, (1, 2))
    assert np.array_equal(both, (labels > 0).astype(np.uint8))


def test_mask_labels_are_for_binary_models(tmp_path):
    from medrefine.models.registry import SegModelConfig
    from medrefine.training.coarse import CoarseTrainConfig

    with pytest.raises(ConfigError, match="binary"):
        CoarseTrainConfig(str(tmp_path), str(tmp_path), mask_labels=(2,),
                          model=SegModelConfig(num_classes=2), class_names=("a", "b"))
    assert CoarseTrainConfig(str(tmp_path), str(tmp_path), mask_labels=[2]).mask_labels == (2,)
