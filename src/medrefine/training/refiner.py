"""Training the diffusion refiner to turn coarse masks into the ground truth.

Each batch pairs an augmented image with an input mask of the kinds a user brings
(``mask_sources.py``): the coarse model's prediction on that augmented image (its real
mistakes), other segmenters' masks, synthetic corruptions of the ground truth, boxes, rough
outlines, shifted, fragmented and low-resolution masks, in the shares of ``mask_sources``.
The coarse model's predictions on its own
training images are nearly perfect, so with ``coarse_fold_weights`` (the k models of a k-fold
cross-validation, ``train --stage coarse --cv-folds k --cv-fold i``) each training image is
predicted by the fold model that did not see it: out-of-fold mistakes, like those on new images.
The noisy input x_t is made from the ground truth or from that coarse mask (so training sees
what refinement starts from: a noised coarse mask), and the target is always the ground truth:

* Gaussian, x0-prediction: BCE + soft Dice on the predicted mask.
* Gaussian, epsilon-prediction: MSE to the noise that leads from the ground truth to x_t.
* Bernoulli (BerDiff): KL between true and predicted one-step posteriors + BCE.

Validation refines the coarse model's predictions on the val split with the default settings
and scores Dice at the original resolution; at the end a small grid of strength x steps is
scored on val and the best becomes the weights' default (never chosen on test).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from medrefine.diffusion import DiffusionConfig, build_diffusion
from medrefine.errors import ConfigError
from medrefine.inference import CoarseSegmenter, resolve_device
from medrefine.models.denoiser import Denoiser, DenoiserConfig
from medrefine.refine import RefineParams, Refiner
from medrefine.training import distributed as D
from medrefine.training.calibrate import VAL_KINDS, ValSet, calibrate_weights
from medrefine.training.data import (
    AugmentConfig,
    SegmentationDataset,
    cases_digest,
    cross_val_folds,
    find_pairs,
    split_pairs,
)
from medrefine.training.loop import (
    autocast,
    end_of_epoch,
    make_loader,
    make_optimizer,
    maybe_resume,
    switch_overrides,
    time_is_up,
    use_bf16,
)
from medrefine.training.losses import segmentation_loss
from medrefine.training.mask_sources import MaskSources, load_segmenters, make_input_masks
from medrefine.training.runlog import RunLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefinerTrainConfig:
    data_dir: str
    output_dir: str
    coarse_weights: str
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    mask_dir: str = "masks"
    epochs: int = 20
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
    max_minutes: float = 0.0
    mask_sources: MaskSources = field(default_factory=MaskSources)
    segmenter_weights: tuple[str, ...] = ()  # other segmenters whose masks it learns to fix
    p_noise_from_gt: float = 0.5  # share of x_t made by noising the ground truth
    t_focus: float = 0.6  # most training timesteps lie in [0, t_focus * T) ...
    p_full_range: float = 0.25  # ... the rest anywhere in [0, T) (sampling from pure noise)
    val_params: RefineParams = field(default_factory=lambda: RefineParams(steps=2))
    val_kinds: tuple[str, ...] = VAL_KINDS  # the inputs validation refines (calibrate.py)
    val_max_cases: int = 40  # val images scored each epoch and in calibration (0 = all)
    tune_strengths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    tune_steps: tuple[int, ...] = (2, 4)
    init_from_coarse: bool = True  # start the image encoder from the coarse model's encoder
    coarse_fold_weights: tuple[str, ...] = ()  # k-fold coarse models for out-of-fold mistakes

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("epochs and batch_size must be >= 1 and lr > 0")
        if self.denoiser.residual and self.diffusion.prediction != "x0":
            raise ConfigError("denoiser.residual adds the coarse logit to an x0 prediction; "
                              "it cannot be used with prediction='epsilon'")
        unknown = set(self.val_kinds) - set(VAL_KINDS)
        if unknown or not self.val_kinds:
            raise ConfigError(f"val_kinds must be taken from {VAL_KINDS}, got {self.val_kinds}")
        for name in ("p_noise_from_gt", "t_focus", "p_full_range"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"{name} must be in [0, 1]")


def load_fold_models(paths: tuple[str, ...], coarse: CoarseSegmenter, train_pairs: list,
                     device: str) -> list[CoarseSegmenter]:
    """The fold model that did not train on each train case (in ``train_pairs`` order).

    The models must be the k folds of one cross-validation of this data (``train --stage
    coarse --cv-folds k --cv-fold 0..k-1``, same seed) on the coarse model's grid."""
    k = len(paths)
    models = [CoarseSegmenter.from_weights(p, device) for p in paths]
    infos = [m.info.get("training", {}) for m in models]
    folds_seen = sorted(i.get("cv_fold", -1) for i in infos)
    if any(i.get("cv_folds") != k for i in infos) or folds_seen != list(range(k)):
        raise ConfigError(f"coarse_fold_weights: expected the {k} models of one {k}-fold "
                          f"cross-validation (train --stage coarse --cv-folds {k} --cv-fold "
                          f"0..{k - 1}); their folds are {[i.get('cv_fold') for i in infos]} of "
                          f"{[i.get('cv_folds') for i in infos]}")
    seeds = {i.get("seed") for i in infos}
    if len(seeds) != 1:
        raise ConfigError(f"coarse_fold_weights: the fold models were trained with different "
                          f"seeds {sorted(seeds)}, so their folds do not match")
    if any(i.get("cv_cases") != cases_digest(train_pairs) for i in infos):
        raise ConfigError("coarse_fold_weights: the fold models were trained on another train "
                          "split (another data folder, or another seed without a manifest)")
    for path, model in zip(paths, models, strict=True):
        if model.pre_cfg != coarse.pre_cfg or model.model_cfg.num_classes != 1:
            raise ConfigError(f"{path}: a fold model must be binary and use the coarse model's "
                              "preprocessing and grid")
    by_fold = {i["cv_fold"]: m for i, m in zip(infos, models, strict=True)}
    fold_of = cross_val_folds(train_pairs, k, seeds.pop())
    return [by_fold[fold_of[p.stem]] for p in train_pairs]


class _Indexed(torch.utils.data.Dataset):
    """(index, *item): lets a batch know which training cases it holds."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int):
        return (idx, *self.dataset[idx])


def sample_timesteps(n: int, cfg: RefinerTrainConfig, T: int, gen: torch.Generator
                     ) -> torch.Tensor:
    focus = torch.randint(0, max(1, int(cfg.t_focus * T)), (n,), generator=gen)
    full = torch.randint(0, T, (n,), generator=gen)
    return torch.where(torch.rand(n, generator=gen) < cfg.p_full_range, full, focus)


def refiner_loss(model, diffusion, kind: str, image01, coarse, gt, t, cfg, gen, device, amp):
    """One batch's loss; all tensors (B, ., H, W) on ``device``, gt in {0, 1}."""
    from_gt = (torch.rand(gt.shape[0], generator=gen) < cfg.p_noise_from_gt).to(device)
    source = torch.where(from_gt[:, None, None, None], gt, coarse)
    if kind == "gaussian":
        noise = torch.randn(gt.shape, generator=gen).to(device)
        x_t = diffusion.add_noise(2 * source - 1, noise, t.cpu())
        net_in = x_t
    else:
        x_t = diffusion.add_noise((source > 0.5).float(), t.cpu(), gen)
        net_in = 2 * x_t - 1
    with autocast(device, amp):
        out = model(net_in, t, (image01, coarse))
    out = out.float()
    labels = gt[:, 0].long()
    if kind == "gaussian" and diffusion.prediction == "epsilon":
        target = diffusion.epsilon_target(2 * gt - 1, x_t, t.cpu())
        return torch.nn.functional.mse_loss(out, target)
    loss = segmentation_loss(out, labels)
    if kind == "bernoulli":
        tt = t.clamp(min=1)
        loss = loss + diffusion.kl_loss(x_t, gt, torch.sigmoid(out), tt.cpu())
    return loss


def init_encoder_from_coarse(model: Denoiser, coarse: CoarseSegmenter) -> bool:
    """Copy the coarse model's image encoder into the refiner's condition encoder when both
    are the same architecture: it already knows this kind of image."""
    source = getattr(coarse.model, "encoder", None)
    target = model.condition.backbone
    src_state, tgt_state = ({} if source is None else source.state_dict()), target.state_dict()
    same = all(k in src_state and src_state[k].shape == v.shape for k, v in tgt_state.items())
    if not same:
        logger.info("refiner image encoder not initialised from the coarse model (different "
                    "architecture)")
        return False
    target.load_state_dict({k: src_state[k] for k in tgt_state})
    logger.info("refiner image encoder initialised from the coarse model's encoder")
    return True


class _CondWrapper(torch.nn.Module):
    """Lets DDP see one forward: (x_t, t, (image01, coarse)) -> output."""

    def __init__(self, denoiser: Denoiser):
        super().__init__()
        self.denoiser = denoiser

    def forward(self, x_t, t, image_and_coarse):
        image01, coarse = image_and_coarse
        return self.denoiser(x_t, t, self.denoiser.encode_condition(image01, coarse))


def weights_info(cfg: RefinerTrainConfig, pre: dict, params: RefineParams, extra: dict) -> dict:
    return {"kind": "refiner", "denoiser": cfg.denoiser.to_dict(),
            "diffusion": cfg.diffusion.to_dict(), "preprocess": pre,
            "refine_defaults": asdict(params),
            "training": {"data_dir": cfg.data_dir, "seed": cfg.seed,
                         "coarse_weights": Path(cfg.coarse_weights).name,
                         "coarse_fold_weights": [str(p) for p in cfg.coarse_fold_weights],
                         "segmenter_weights": [str(p) for p in cfg.segmenter_weights],
                         "mask_sources": asdict(cfg.mask_sources),
                         **extra}}


def train_refiner(cfg: RefinerTrainConfig) -> Path:
    device = resolve_device(cfg.device)
    dist_info = D.init_distributed(device)
    device = D.local_device(device, dist_info)
    torch.manual_seed(cfg.seed + dist_info.rank)
    rng = np.random.default_rng(cfg.seed + dist_info.rank)
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * dist_info.rank)
    run = RunLog(cfg.output_dir, enabled=dist_info.is_main)
    run.write_config({"stage": "refiner", **asdict(cfg), "world_size": dist_info.world_size})

    coarse = CoarseSegmenter.from_weights(cfg.coarse_weights, str(device))
    if coarse.model_cfg.num_classes != 1:
        raise ConfigError("the refiner refines binary masks; the coarse model is multi-class")
    pre = coarse.pre_cfg
    pairs = find_pairs(cfg.data_dir, cfg.mask_dir)
    split = split_pairs(cfg.data_dir, pairs, cfg.seed)
    train_set = SegmentationDataset(split["train"], pre, 1, cfg.augment)
    case_models = ([coarse] * len(train_set) if not cfg.coarse_fold_weights else
                   load_fold_models(cfg.coarse_fold_weights, coarse, split["train"], str(device)))
    segmenters = load_segmenters(cfg.segmenter_weights, coarse, str(device))
    loader, sampler = make_loader(_Indexed(train_set), cfg.batch_size, cfg.seed, cfg.workers,
                                  dist_info)
    val_pairs = split["val"][:cfg.val_max_cases] if cfg.val_max_cases else split["val"]
    val = ValSet(coarse, val_pairs[dist_info.rank::dist_info.world_size], cfg.val_kinds,
                 cfg.seed)
    coarse_val = D.all_reduce_sum(_sum_count(val.score(None, cfg.val_params)), dist_info)
    coarse_val_dice = coarse_val[0] / max(coarse_val[1], 1)

    denoiser_cfg = replace(cfg.denoiser, image_channels=coarse.model_cfg.in_channels)
    cfg = replace(cfg, denoiser=denoiser_cfg)
    model = Denoiser(denoiser_cfg, pretrained=cfg.pretrained).to(device)
    if cfg.init_from_coarse:
        init_encoder_from_coarse(model, coarse)
    # channels-last from the start (as inference runs it): validation changes nothing in place
    model = model.to(memory_format=torch.channels_last)
    wrapped = _CondWrapper(model)
    diffusion = build_diffusion(cfg.diffusion)
    optimizer, scheduler = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.epochs,
                                          len(loader), cfg.warmup_epochs)
    resume_path = Path(cfg.output_dir) / "resume.pt"
    progress = maybe_resume(cfg.resume, resume_path, model, optimizer, scheduler, run)
    train_model = DistributedDataParallel(wrapped) if dist_info.enabled else wrapped
    amp = use_bf16(cfg.amp, device)
    pre_dict = asdict(pre)
    t0 = time.time()
    for epoch in range(progress.start_epoch, cfg.epochs + 1):
        train_model.train()
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        losses = []
        bar = tqdm(loader, desc=f"refiner epoch {epoch}/{cfg.epochs}", mininterval=10,
                   disable=not dist_info.is_main, leave=False)
        for index, image01, labels in bar:
            coarse_probs = make_input_masks(cfg.mask_sources,
                                            [case_models[i] for i in index.tolist()],
                                            segmenters, image01, labels, rng)
            image01, coarse_probs = image01.to(device), coarse_probs.to(device)
            gt = (labels == 1).float().unsqueeze(1).to(device)
            t = sample_timesteps(gt.shape[0], cfg, diffusion.num_timesteps, gen).to(device)
            loss = refiner_loss(train_model, diffusion, cfg.diffusion.kind, image01,
                                coarse_probs, gt, t, cfg, gen, device, amp)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}", refresh=False)
        refiner = Refiner(model, cfg.diffusion, pre, device)
        scores = val.score(refiner, cfg.val_params)
        model.train()
        s, n, loss_sum = D.all_reduce_sum(
            [*_sum_count(scores), float(np.mean(losses))], dist_info)
        val_dice, train_loss = s / max(n, 1), loss_sum / dist_info.world_size
        minutes = progress.minutes_before + (time.time() - t0) / 60
        extra = {"epoch": epoch, "val_dice_refined": val_dice,
                 "val_dice_inputs": coarse_val_dice, "val_kinds": list(cfg.val_kinds),
                 "epochs_planned": cfg.epochs}
        end_of_epoch(run, dist_info, model, optimizer, scheduler, resume_path, epoch, val_dice,
                     progress, weights_info(cfg, pre_dict, cfg.val_params, extra),
                     {"epoch": epoch, "train_loss": train_loss, "val_dice": val_dice,
                      "val_dice_inputs": coarse_val_dice, "lr": scheduler.get_last_lr()[0],
                      "minutes": minutes}, ("train_loss", "val_dice"))
        logger.info("refiner epoch %d loss %.4f val dice %.4f (inputs %.4f, best %.4f)",
                    epoch, train_loss, val_dice, coarse_val_dice, progress.best)
        if time_is_up(cfg.max_minutes, (time.time() - t0) / 60, dist_info):
            break
    D.barrier(dist_info)
    if dist_info.is_main and (run.dir / "best.safetensors").is_file():
        tune_defaults(run.dir / "best.safetensors", ValSet(coarse, val_pairs, cfg.val_kinds,
                                                           cfg.seed, shifts=True),
                      cfg, str(device))
    D.shutdown(dist_info)
    return run.dir


def _sum_count(scores: dict[str, list[float]]) -> list[float]:
    values = [v for kind in scores.values() for v in kind]
    return [float(np.sum(values)), float(len(values))]


def tune_defaults(weights: Path, val: ValSet, cfg: RefinerTrainConfig, device: str) -> dict:
    """Calibrate steps, auto strength and the leave-alone threshold on val
    (``calibrate.py``) and store them in the weights as their defaults."""
    return calibrate_weights(weights, val, cfg.val_params, cfg.tune_strengths, cfg.tune_steps,
                             device)


def train_refiner_from_args(args, base: dict) -> Path:
    """``medrefine train --stage refiner`` (called by commands/train.py)."""
    run_dir = train_refiner(refiner_config_from_args(args, base))
    if os.environ.get("RANK", "0") == "0":
        print(f"refiner: {run_dir / 'best.safetensors'}")
    return run_dir


def refiner_config_from_args(args, base: dict) -> RefinerTrainConfig:
    """The refiner's training config: the file's ``refiner`` section, then the flags."""
    from medrefine.config import build_dataclass

    data = dict(base.get("refiner", {}))
    for key in ("data_dir", "epochs", "batch_size", "lr", "device", "seed", "mask_dir",
                "max_minutes", "workers", "coarse_weights", "coarse_fold_weights"):
        value = getattr(args, key, None)
        if value is not None:
            data[key] = value
    data.setdefault("data_dir", base.get("coarse", {}).get("data_dir"))
    out = Path(args.output_dir or data.get("output_dir", "checkpoints"))
    data["output_dir"] = str(out / "refiner" if args.stage == "both" else out)
    data.update(switch_overrides(args))
    if not data.get("coarse_weights"):
        raise ConfigError("training the refiner needs --coarse-weights (the coarse model whose "
                          "masks it learns to correct), or --stage both")
    if not data.get("data_dir"):
        raise ConfigError("train needs --data DIR (a folder with images/ and masks/)")
    return build_dataclass(RefinerTrainConfig, data, "refiner config")
