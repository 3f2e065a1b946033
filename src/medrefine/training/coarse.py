"""Training the coarse segmenter (CPUNet and alternatives).

An explicit loop: AdamW with warm-up + cosine schedule, Dice + BCE/CE loss with deep
supervision, bf16 autocast on CPUs that have it, validation Dice each epoch computed by the
same ``CoarseSegmenter.predict`` that ``segment`` uses (on the original image size), best and
last weights in safetensors, resume, and DDP when launched by torchrun.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from medrefine.checkpoint import load_matching, unwrap
from medrefine.errors import ConfigError
from medrefine.inference import CoarseSegmenter, resolve_device
from medrefine.io import read_image
from medrefine.metrics import dice
from medrefine.models.registry import SegModelConfig, build_seg_model
from medrefine.preprocess import PreprocessConfig
from medrefine.training import distributed as D
from medrefine.training.data import (
    AugmentConfig,
    Pair,
    SegmentationDataset,
    cases_digest,
    cross_val_folds,
    find_pairs,
    read_label_map,
    split_pairs,
)
from medrefine.training.loop import (
    autocast,
    end_of_epoch,
    make_loader,
    make_optimizer,
    maybe_resume,
    time_is_up,
    use_bf16,
)
from medrefine.training.losses import deep_supervision_loss
from medrefine.training.runlog import RunLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CoarseTrainConfig:
    data_dir: str
    output_dir: str
    model: SegModelConfig = field(default_factory=SegModelConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mask_dir: str = "masks"
    class_names: tuple[str, ...] = ("foreground",)
    epochs: int = 40
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    workers: int = 0
    resume: bool = False
    pretrained: bool = True
    max_minutes: float = 0.0  # stop after this wall time (0 = no limit); the schedule is kept
    # cross-validation: with cv_folds = k >= 2, train on the train split minus fold cv_fold.
    # The k models' predictions on the cases each did not see (out-of-fold) are the realistic
    # mistakes the refiner learns from (``refiner.coarse_fold_weights``).
    cv_folds: int = 0
    cv_fold: int = 0
    keep_epochs: tuple[int, ...] = ()  # also save these epochs' weights (epoch_K.safetensors)
    # fine-tuning: start from these weights (e.g. another preset's coarse.safetensors); tensors
    # of the same name and shape are copied, the rest (an output head for other classes) not
    init_weights: str = ""
    # binary models: the foreground is these label values of the mask files (e.g. [2] for one
    # class of a masks_multiclass folder); empty = the masks as they are
    mask_labels: tuple[int, ...] = ()

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs and batch_size must be >= 1 and lr > 0")
        if self.model.in_channels != self.preprocess.channels:
            raise ConfigError(f"model.in_channels ({self.model.in_channels}) must equal "
                              f"preprocess.channels ({self.preprocess.channels})")
        if self.mask_labels and self.model.num_classes != 1:
            raise ConfigError("mask_labels selects the foreground of a binary model; "
                              f"this model has {self.model.num_classes} classes")
        object.__setattr__(self, "mask_labels", tuple(int(v) for v in self.mask_labels))
        if len(self.class_names) != self.model.num_classes:
            raise ConfigError(f"{len(self.class_names)} class names for "
                              f"{self.model.num_classes} classes")
        if self.cv_folds == 1 or self.cv_folds < 0:
            raise ConfigError(f"cv_folds must be 0 (off) or >= 2, got {self.cv_folds}")
        if self.cv_folds and not 0 <= self.cv_fold < self.cv_folds:
            raise ConfigError(f"cv_fold must be in 0..{self.cv_folds - 1}, got {self.cv_fold}")


def validate(segmenter: CoarseSegmenter, pairs: list[Pair], num_classes: int,
             mask_labels: tuple[int, ...] = ()) -> list[float]:
    """Dice per image (mean over foreground classes) at the original resolution. With
    ``mask_labels`` (a class picked from label maps, often absent) only the images whose
    reference holds it count, so a model that finds nothing cannot score 1 on the rest."""
    scores = []
    for pair in pairs:
        labels = read_label_map(pair.mask, num_classes, mask_labels)
        if mask_labels and not labels.any():
            continue
        loaded = read_image(pair.image)
        probs = segmenter.predict(loaded.array, loaded.meta["source_dtype"])
        if num_classes == 1:
            scores.append(dice(probs[0] > 0.5, labels == 1))
        else:
            pred = probs.argmax(0)
            valid = labels != 255
            scores.append(float(np.mean([dice((pred == c) & valid, (labels == c) & valid)
                                         for c in range(1, num_classes + 1)])))
    return scores


def weights_info(cfg: CoarseTrainConfig, extra: dict) -> dict:
    return {
        "kind": "coarse",
        "model": cfg.model.to_dict(),
        "preprocess": asdict(cfg.preprocess),
        "class_names": list(cfg.class_names),
        "training": {"data_dir": cfg.data_dir, "seed": cfg.seed,
                     **({"init_weights": cfg.init_weights} if cfg.init_weights else {}),
                     **({"mask_labels": list(cfg.mask_labels)} if cfg.mask_labels else {}),
                     **extra},
    }


def train_coarse(cfg: CoarseTrainConfig) -> Path:
    """Train; returns the run folder (holding best.safetensors)."""
    device = resolve_device(cfg.device)
    dist_info = D.init_distributed(device)
    device = D.local_device(device, dist_info)
    torch.manual_seed(cfg.seed + dist_info.rank)
    run = RunLog(cfg.output_dir, enabled=dist_info.is_main)
    run.write_config({"stage": "coarse", **asdict(cfg), "world_size": dist_info.world_size})

    pairs = find_pairs(cfg.data_dir, cfg.mask_dir)
    split = split_pairs(cfg.data_dir, pairs, cfg.seed)
    if not split["train"] or not split["val"]:
        raise ConfigError(f"{cfg.data_dir}: the split has no train or no val cases")
    cv_info = {}
    if cfg.cv_folds:
        cv_info = {"cv_folds": cfg.cv_folds, "cv_fold": cfg.cv_fold,
                   "cv_cases": cases_digest(split["train"])}
        folds = cross_val_folds(split["train"], cfg.cv_folds, cfg.seed)
        split["train"] = [p for p in split["train"] if folds[p.stem] != cfg.cv_fold]
        logger.info("cross-validation fold %d/%d: training on %d cases", cfg.cv_fold,
                    cfg.cv_folds, len(split["train"]))
    train_set = SegmentationDataset(split["train"], cfg.preprocess, cfg.model.num_classes,
                                    cfg.augment, mask_labels=cfg.mask_labels)
    loader, sampler = make_loader(train_set, cfg.batch_size, cfg.seed, cfg.workers, dist_info)

    model = build_seg_model(cfg.model, pretrained=cfg.pretrained)
    if cfg.init_weights:
        copied, total = load_matching(model, cfg.init_weights)
        logger.info("started from %s: %d of %d tensors", cfg.init_weights, copied, total)
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer, scheduler = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.epochs,
                                          len(loader), cfg.warmup_epochs)
    resume_path = Path(cfg.output_dir) / "resume.pt"
    progress = maybe_resume(cfg.resume, resume_path, model, optimizer, scheduler, run)
    train_model = DistributedDataParallel(model) if dist_info.enabled else model
    amp = use_bf16(cfg.amp, device)
    val_pairs = split["val"][dist_info.rank::dist_info.world_size]
    t0 = time.time()
    for epoch in range(progress.start_epoch, cfg.epochs + 1):
        train_model.train()
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        losses = []
        bar = tqdm(loader, desc=f"epoch {epoch}/{cfg.epochs}", disable=not dist_info.is_main,
                   mininterval=10, leave=False)
        for image01, labels in bar:
            image01 = image01.to(device, non_blocking=True).contiguous(
                memory_format=torch.channels_last)
            labels = labels.to(device, non_blocking=True)
            with autocast(device, amp):
                outputs = train_model(image01)
            loss = deep_supervision_loss(outputs, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)
        segmenter = CoarseSegmenter(unwrap(model), cfg.model, cfg.preprocess, device)
        scores = validate(segmenter, val_pairs, cfg.model.num_classes, cfg.mask_labels)
        total_dice, count, loss_sum = D.all_reduce_sum(
            [float(np.sum(scores)), float(len(scores)), float(np.mean(losses))], dist_info)
        val_dice = total_dice / max(count, 1.0)
        train_loss = loss_sum / dist_info.world_size
        minutes = progress.minutes_before + (time.time() - t0) / 60
        extra = {"epoch": epoch, "val_dice": val_dice, "epochs_planned": cfg.epochs, **cv_info}
        end_of_epoch(run, dist_info, model, optimizer, scheduler, resume_path, epoch, val_dice,
                     progress, weights_info(cfg, extra),
                     {"epoch": epoch, "train_loss": train_loss, "val_dice": val_dice,
                      "lr": scheduler.get_last_lr()[0], "minutes": minutes},
                     ("train_loss", "val_dice"), cfg.keep_epochs)
        logger.info("epoch %d loss %.4f val dice %.4f (best %.4f) %.1f min", epoch, train_loss,
                    val_dice, progress.best, minutes)
        if time_is_up(cfg.max_minutes, (time.time() - t0) / 60, dist_info):
            break
    D.barrier(dist_info)
    D.shutdown(dist_info)
    return run.dir
