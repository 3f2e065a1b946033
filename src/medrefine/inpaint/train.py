"""Training the inpainting model: ``medrefine train --stage inpaint --config configs/inpaint.yaml``.

Data: the train splits of the chest X-ray folders (manifest splits, ``training.data``), each
image scaled to [0, 1] by its own range and resized to the working grid once, in memory. Each
step draws a random mask (``inpaint.masks``: rib bands, strokes, boxes, real device outlines
from the train masks' device label placed elsewhere), a random crop around the hole (cheaper
steps; the net is fully convolutional), a timestep t and noise, and regresses x0 over the
hole pixels (MSE: the quantity PSNR measures). Validation: the val splits with seeded masks,
one-step sampling, PSNR over the hole; the best checkpoint is kept. The loop is explicit, as
in ``training/coarse.py``, and shares its run folder, optimizer and wall-time helpers."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from medrefine.diffusion import refinement_timesteps
from medrefine.errors import ConfigError
from medrefine.inference import resolve_device
from medrefine.inpaint import masks as M
from medrefine.inpaint.model import (
    InpaintModelConfig,
    build_model,
    build_schedule,
    prefill,
    to_unit,
    weights_info,
)
from medrefine.inpaint.sample import sample_fill
from medrefine.io import read_image
from medrefine.training import distributed as D
from medrefine.training.data import find_pairs, split_pairs
from medrefine.training.loop import make_optimizer, time_is_up
from medrefine.training.runlog import RunLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InpaintTrainConfig:
    """data_dirs: folders with images/ and a manifest split; device_dir: the folder whose
    ``masks_multiclass`` label ``device_label`` gives the device outlines (train cases only)."""

    data_dirs: tuple[str, ...] = ("../shared/data/covid_cxr_lungs_v7",
                                  "../shared/data/covid_cxr_lungs")
    device_dir: str = "../shared/data/covid_cxr_lungs_v7"
    device_label: int = 2
    output_dir: str = "runs/inpaint"
    model: InpaintModelConfig = field(default_factory=InpaintModelConfig)
    crop: int = 128
    batch_size: int = 12
    steps_per_epoch: int = 100
    epochs: int = 30
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    max_minutes: float = 0.0
    val_cases: int = 42
    device: str = "auto"
    # share of each batch drawn at the timesteps a few-step sampler visits (those of a
    # ``sampler_steps``-step DDIM from pure noise: 999, 750, 500, 250 for 4), where a 1-4 step
    # fill is decided; the rest uniform over 0..T-1
    sampler_t_share: float = 0.5
    sampler_steps: int = 4

    def __post_init__(self):
        if not self.data_dirs:
            raise ConfigError("inpaint training needs at least one data folder")
        if self.crop % (8 * self.model.net.patch) or self.crop > self.model.size:
            raise ConfigError(f"crop {self.crop} must divide by {8 * self.model.net.patch} and "
                              f"be at most the model size {self.model.size}")
        if self.batch_size < 1 or self.epochs < 1 or self.steps_per_epoch < 1:
            raise ConfigError("batch_size, epochs and steps_per_epoch must be >= 1")
        if not 0.0 <= self.sampler_t_share <= 1.0 or self.sampler_steps < 1:
            raise ConfigError("sampler_t_share must be in [0, 1] and sampler_steps >= 1")
        object.__setattr__(self, "data_dirs", tuple(self.data_dirs))


def load_grid(path: Path, size: int) -> np.ndarray:
    """An X-ray as float32 (size, size) in [0, 1] (its own min..max, first channel)."""
    array = read_image(path).array[0]
    image01, _, _ = to_unit(array, np.zeros(array.shape, np.uint8))
    return cv2.resize(image01, (size, size), interpolation=cv2.INTER_AREA)


def load_split(data_dirs, split: str, size: int, seed: int) -> tuple[list[np.ndarray], list]:
    """Images of one split from every folder; a stem already seen is not loaded twice."""
    images, seen = [], set()
    for d in data_dirs:
        pairs = split_pairs(d, find_pairs(d), seed)[split]
        for pair in pairs:
            if pair.stem not in seen:
                seen.add(pair.stem)
                images.append(load_grid(pair.image, size))
    return images, sorted(seen)


def load_outlines(device_dir: str, label: int, size: int, seed: int) -> list[np.ndarray]:
    pairs = split_pairs(device_dir, find_pairs(device_dir, "masks_multiclass"), seed)["train"]
    maps = [cv2.resize(read_image(p.mask).array[0].astype(np.uint8), (size, size),
                       interpolation=cv2.INTER_NEAREST) for p in pairs]
    return M.device_outlines(maps, label)


def make_batch(images, outlines, cfg: InpaintTrainConfig, rng: np.random.Generator):
    """(image01, hole, prefill01) tensors (B, 1, crop, crop). The pre-fill is made on the whole
    grid, then cropped, as at inference: a hole cut by the crop's edge would otherwise get a
    worse classical fill in training than the net ever sees in use."""
    size, crop = cfg.model.size, cfg.crop
    batch = []
    for _ in range(cfg.batch_size):
        image01 = images[int(rng.integers(len(images)))]
        gain, gamma = rng.uniform(0.9, 1.1), rng.uniform(0.8, 1.25)
        image01 = np.clip(image01 ** gamma * gain, 0, 1).astype(np.float32)
        hole = M.random_mask((size, size), rng, outlines)
        fill01 = prefill(image01, hole, cfg.model.prefill)
        ys, xs = np.nonzero(hole)
        k = int(rng.integers(len(ys)))
        y0 = int(np.clip(ys[k] - rng.integers(crop), 0, size - crop))
        x0 = int(np.clip(xs[k] - rng.integers(crop), 0, size - crop))
        image01, hole, fill01 = (a[y0:y0 + crop, x0:x0 + crop] for a in (image01, hole, fill01))
        if hole.all():  # a crop with no known pixel: the top rows become known
            hole = hole.copy()
            hole[: crop // 8] = 0
            fill01 = np.where(hole > 0, fill01, image01)
        batch.append((image01, hole, fill01))
    return [torch.from_numpy(np.stack([b[i] for b in batch])[:, None].astype(np.float32))
            for i in range(3)]


def val_set(images, outlines, size: int, seed: int, method: str = "telea") -> list[tuple]:
    """(image01, hole, prefill01) per val image, seeded masks."""
    rng = np.random.default_rng(seed + 1000)
    cases = []
    for img in images:
        hole = M.random_mask((size, size), rng, outlines)
        cases.append((img, hole, prefill(img, hole, method)))
    return cases


@torch.no_grad()
def validate(model, schedule, cases) -> float:
    """Mean PSNR (dB) over the hole pixels, one DDIM step, one sample."""
    from medrefine.metrics import psnr

    model.eval()
    scores = []
    for image01, hole, pre01 in cases:
        fill01, _ = sample_fill(model, schedule, image01, hole, pre01,
                                steps=1, samples=1, seed=0)
        scores.append(psnr(fill01[hole > 0], image01[hole > 0]))
    model.train()
    return float(np.mean(scores))


def train_inpaint(cfg: InpaintTrainConfig) -> Path:
    """Train; returns the run folder (best.safetensors: the best val PSNR). Runs unchanged
    under torchrun (DDP): each rank draws its own batches, rank 0 validates and saves."""
    from medrefine.checkpoint import save_weights

    device = resolve_device(cfg.device)
    dist_info = D.init_distributed(device)
    device = D.local_device(device, dist_info)
    torch.manual_seed(cfg.seed + dist_info.rank)
    rng = np.random.default_rng(cfg.seed + dist_info.rank)
    run = RunLog(cfg.output_dir, enabled=dist_info.is_main)
    run.write_config({"stage": "inpaint", **asdict(cfg), "world_size": dist_info.world_size})
    size = cfg.model.size
    images, stems = load_split(cfg.data_dirs, "train", size, cfg.seed)
    val_images, _ = load_split(cfg.data_dirs[:1], "val", size, cfg.seed)
    outlines = load_outlines(cfg.device_dir, cfg.device_label, size, cfg.seed)
    logger.info("%d train images, %d val images, %d device outlines", len(images),
                len(val_images), len(outlines))
    val_cases = (val_set(val_images[: cfg.val_cases], outlines, size, cfg.seed,
                         cfg.model.prefill) if dist_info.is_main else [])
    model = build_model(cfg.model).to(device)
    train_model = DistributedDataParallel(model) if dist_info.enabled else model
    schedule = build_schedule(cfg.model)
    T = schedule.num_timesteps
    sampler_t = torch.tensor(refinement_timesteps(T, 1.0, cfg.sampler_steps))
    optimizer, scheduler = make_optimizer(model, cfg.lr, cfg.weight_decay, cfg.epochs,
                                          cfg.steps_per_epoch, 0.5)
    info = {"train_cases": len(images), "data_dirs": list(cfg.data_dirs),
            "device_outlines": len(outlines), "seed": cfg.seed,
            "world_size": dist_info.world_size}
    gen = torch.Generator().manual_seed(cfg.seed + dist_info.rank)
    best, t0 = -1.0, time.time()
    for epoch in range(1, cfg.epochs + 1):
        losses = []
        for _ in tqdm(range(cfg.steps_per_epoch), desc=f"epoch {epoch}", mininterval=30,
                      leave=False, disable=not dist_info.is_main):
            image01, hole, fill01 = (v.to(device) for v in make_batch(images, outlines, cfg, rng))
            x0 = 2 * image01 - 1
            t = torch.randint(0, T, (x0.shape[0],), generator=gen)
            at_sampler = torch.rand(x0.shape[0], generator=gen) < cfg.sampler_t_share
            pick = torch.randint(0, len(sampler_t), (x0.shape[0],), generator=gen)
            t = torch.where(at_sampler, sampler_t[pick], t).to(device)
            noise = torch.randn(x0.shape, generator=gen).to(device)
            x_t = schedule.add_noise(x0, noise, t)
            logits = train_model(x_t, t, image01 * (1 - hole), hole, fill01)
            err = (schedule.predict_x0(logits, x_t, t) - x0).square()
            loss = (err * hole).sum() / hole.sum().clamp(min=1) / 4  # MSE in [0, 1] units
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
        minutes = (time.time() - t0) / 60
        train_loss = D.all_reduce_sum([float(np.mean(losses))], dist_info)[0] / dist_info.world_size
        if dist_info.is_main:
            cpu_model = copy.deepcopy(model).cpu()  # validated and saved on the CPU
            val_psnr = validate(cpu_model, schedule, val_cases)
            extra = {**info, "epoch": epoch, "val_psnr": val_psnr, "minutes": minutes}
            save_weights(run.dir / "last.safetensors", cpu_model, weights_info(cfg.model, extra))
            if val_psnr > best:
                best = val_psnr
                save_weights(run.dir / "best.safetensors", cpu_model,
                             weights_info(cfg.model, extra))
            run.log({"epoch": epoch, "train_loss": train_loss, "val_psnr": val_psnr,
                     "best": best, "lr": scheduler.get_last_lr()[0], "minutes": minutes},
                    ("train_loss", "val_psnr"))
            logger.info("epoch %d loss %.5f val psnr %.2f (best %.2f) %.1f min", epoch,
                        train_loss, val_psnr, best, minutes)
        D.barrier(dist_info)
        if time_is_up(cfg.max_minutes, minutes, dist_info):
            break
    del train_model  # DDP's reducer goes before the group it uses
    D.shutdown(dist_info)
    return run.dir


def train_from_args(args, base: dict) -> Path:
    """``medrefine train --stage inpaint``: the config file's ``inpaint`` section (or the whole
    file), then the explicit flags that apply (-o, --epochs, --batch-size, --lr, --seed,
    --max-minutes, --data for a single data folder)."""
    return train_inpaint(config_from_args(args, base))


def config_from_args(args, base: dict) -> InpaintTrainConfig:
    """The inpainting model's training config (``train_from_args``), built, not run."""
    from medrefine.config import build_dataclass

    data = dict(base.get("inpaint", {k: v for k, v in base.items() if k != "stage"}))
    for key, value in [("output_dir", args.output_dir), ("epochs", args.epochs),
                       ("device", getattr(args, "device", None)),
                       ("batch_size", args.batch_size), ("lr", args.lr), ("seed", args.seed),
                       ("max_minutes", args.max_minutes)]:
        if value is not None:
            data[key] = value
    if args.data_dir:
        data["data_dirs"] = [args.data_dir]
    return build_dataclass(InpaintTrainConfig, data, "inpaint config")
