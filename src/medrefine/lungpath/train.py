"""Training DiffSegLung: ``medrefine train --stage lungpath --config configs/lungpath.yaml``.

Stage 1: a pixel-space DDPM (epsilon prediction, ``diffusion.GaussianDiffusion``) on 2D axial
patches from inside the lung masks of the train splits. Stage 2 (distillation), from stage 1's
weights: the same loss plus InfoNCE (van den Oord et al. 2018) between a projection of the
pooled bottleneck and an embedding of the patch's 34-dim radiomic descriptor
(``radiomics.descriptor``), its weight ramped linearly from 0 over ``warmup_steps`` so the
bottleneck is not pulled into a collapse before the denoiser has formed it (DiffSegLung,
sec. 2.2). Only timesteps below ``distill_max_t`` enter InfoNCE (the descriptor is no longer
recoverable from almost pure noise).

Runs on one process or under ``torchrun`` (DDP, gloo on CPU; ``training.distributed``): each
rank draws its own batches (seed + rank), gradients are averaged, rank 0 writes. Writes
``stage1.safetensors``, ``stage2.safetensors`` (the distilled model) and the run log
(config.json, metrics.jsonl) to ``output_dir``.

3D patches (``configs/lungpath_3d.yaml``): ``train.patch_depth`` D (odd, >= 3) with
``net.dims`` 3 trains on D x P x P blocks of neighbouring slices (``data.load_stacks``: volume
folders only; single-slice folders are skipped with a log line). The radiomic teacher stays
2D: a block's descriptor is that of its central slice. Augmentation adds a z flip to the
in-plane flips and turns; InfoNCE pools the bottleneck over all its spatial axes.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

from medrefine.checkpoint import save_weights
from medrefine.diffusion import DiffusionConfig
from medrefine.diffusion.gaussian import GaussianDiffusion
from medrefine.errors import ConfigError
from medrefine.lungpath.net import LungDenoiser, NetConfig
from medrefine.lungpath.radiomics import RadiomicsConfig, descriptor
from medrefine.training import distributed as D
from medrefine.training.runlog import RunLog

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    data_dirs: tuple[str, ...] = (
        "../shared/data/covid_ct_lung_infection_ma",
        "../shared/data/medseg_covid_ct_infnet",
    )
    output_dir: str = "runs/lungpath"
    patch: int = 32
    n_patches: int = 6000
    min_lung_share: float = 0.5
    max_slices: int = 0  # per data folder; 0 = the whole train split (smoke tests use a few)
    patch_depth: int = 0  # 0: 2D patches; odd >= 3: patch_depth x patch x patch (net.dims 3)
    batch_size: int = 32
    stage1_steps: int = 3000
    stage2_steps: int = 2500
    lr: float = 2e-3
    weight_decay: float = 1e-4
    infonce_weight: float = 0.5
    warmup_steps: int = 800
    temperature: float = 0.1
    distill_max_t: int = 600
    seed: int = 0
    threads: int = 1
    max_minutes: float = 0.0  # per stage; 0 = no limit
    log_every: int = 100

    def __post_init__(self):
        if self.patch % 8 or self.patch < 16:
            raise ConfigError(f"train.patch must be a multiple of 8, >= 16; got {self.patch}")
        if self.batch_size < 2:
            raise ConfigError("train.batch_size must be >= 2 (InfoNCE needs negatives)")
        if self.stage1_steps < 0 or self.stage2_steps < 0 or self.warmup_steps < 0:
            raise ConfigError("train: steps must be >= 0")
        if self.patch_depth and (self.patch_depth < 3 or self.patch_depth % 2 == 0):
            raise ConfigError(
                f"train.patch_depth must be 0 (2D patches) or odd and >= 3 (3D patches with a "
                f"central slice), got {self.patch_depth}"
            )
        object.__setattr__(self, "data_dirs", tuple(self.data_dirs))


@dataclass(frozen=True)
class ModelConfig:
    """What rebuilds the model: stored in every weights file."""

    net: NetConfig = field(default_factory=NetConfig)
    diffusion: DiffusionConfig = field(
        default_factory=lambda: DiffusionConfig(prediction="epsilon")
    )
    radiomics: RadiomicsConfig = field(default_factory=RadiomicsConfig)


def check_dims(cfg: TrainConfig, mcfg: ModelConfig) -> None:
    """net.dims 3 and train.patch_depth > 0 go together."""
    if (mcfg.net.dims == 3) != (cfg.patch_depth > 0):
        raise ConfigError(
            f"net.dims {mcfg.net.dims} with train.patch_depth {cfg.patch_depth}: 3D patches "
            "need both net.dims 3 and an odd train.patch_depth >= 3 (2D: dims 2, patch_depth 0)"
        )


def lung_windows(
    lung: np.ndarray, p: int, want: int, min_share: float, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """Up to ``want`` top-left corners of p x p windows centred on lung pixels with at least
    ``min_share`` lung (20 tries per window)."""
    half = p // 2
    ys, xs = np.nonzero(lung[half:-half, half:-half])
    if len(ys) == 0:
        return []
    corners: list[tuple[int, int]] = []
    tries = 0
    while len(corners) < want and tries < 20 * want:
        tries += 1
        k = int(rng.integers(len(ys)))
        y, x = ys[k], xs[k]  # top-left corner of the window centred on a lung pixel
        if lung[y : y + p, x : x + p].mean() >= min_share:
            corners.append((y, x))
    return corners


def patch_bank(
    cfg: TrainConfig, rcfg: RadiomicsConfig, split: str = "train"
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(patches (N, P, P) in [-1, 1], descriptors (N, 34), facts) from the split's slices;
    with ``cfg.patch_depth`` the 3D bank of ``patch_bank_3d``."""
    from medrefine.lungpath.data import load_slices

    if cfg.patch_depth:
        return patch_bank_3d(cfg, rcfg, split)
    rng = np.random.default_rng(cfg.seed)
    slices = [s for d in cfg.data_dirs for s in load_slices(d, split, cfg.max_slices or None)]
    if not slices:
        raise ConfigError(f"no {split} slices in {cfg.data_dirs}")
    p = cfg.patch
    per_slice = int(np.ceil(cfg.n_patches / len(slices)))
    patches = []
    for s in slices:
        image01, lung = s.image01, s.lung
        if image01.shape[0] < p or image01.shape[1] < p:
            continue
        for y, x in lung_windows(lung, p, per_slice, cfg.min_lung_share, rng):
            patches.append(image01[y : y + p, x : x + p])
    patches = np.stack(patches)[: cfg.n_patches].astype(np.float32)
    desc = np.stack([descriptor(x, rcfg) for x in patches])
    facts = {"slices": len(slices), "patches": len(patches), "split": split}
    return patches, desc, facts


def patch_bank_3d(
    cfg: TrainConfig, rcfg: RadiomicsConfig, split: str = "train"
) -> tuple[np.ndarray, np.ndarray, dict]:
    """(blocks (N, D, P, P) in [-1, 1], descriptors (N, 34), facts), D = ``patch_depth``.

    Blocks come from stacks of neighbouring slices (``data.load_stacks``); folders without
    volume grouping are skipped. A block is centred on a slice with D // 2 neighbours either
    side, its window chosen on that central slice's lung mask as in 2D. The teacher stays 2D:
    a block's descriptor is ``radiomics.descriptor`` of its central slice."""
    from medrefine.lungpath.data import load_stacks

    rng = np.random.default_rng(cfg.seed)
    d, p, dh = cfg.patch_depth, cfg.patch, cfg.patch_depth // 2
    stacks = []
    for data_dir in cfg.data_dirs:
        got = load_stacks(data_dir, split, cfg.max_slices or None)
        if got is None:
            logger.info(
                "%s: single slices, not volumes (no grouping.groups in its manifest): "
                "skipped for 3D patches",
                data_dir,
            )
            continue
        stacks += [s for s in got if len(s) >= d and min(s.image01.shape[1:]) >= p]
    centres = sum(len(s) - 2 * dh for s in stacks)
    if not centres:
        raise ConfigError(
            f"no {split} stacks of >= {d} neighbouring slices in {cfg.data_dirs}: 3D patches "
            "need a volume folder (covid_ct_lung_infection_ma) and max_slices 0 or >= "
            "patch_depth"
        )
    per_slice = int(np.ceil(cfg.n_patches / centres))
    blocks = []
    for s in stacks:
        for c in range(dh, len(s) - dh):
            for y, x in lung_windows(s.lung[c], p, per_slice, cfg.min_lung_share, rng):
                blocks.append(s.image01[c - dh : c + dh + 1, y : y + p, x : x + p])
    if not blocks:
        raise ConfigError(f"no {split} 3D patch has lung share >= {cfg.min_lung_share}")
    blocks = np.stack(blocks)[: cfg.n_patches].astype(np.float32)  # (N, D, P, P)
    desc = np.stack([descriptor(b[dh], rcfg) for b in blocks])  # the central slice's
    facts = {
        "stacks": len(stacks),
        "slices": sum(len(s) for s in stacks),
        "patches": len(blocks),
        "patch_depth": d,
        "split": split,
    }
    return blocks, desc, facts


def standardise(desc: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z-scores clipped to +-5, with the mean and std that produce them."""
    mean, std = desc.mean(0), desc.std(0) + 1e-6
    return np.clip((desc - mean) / std, -5, 5).astype(np.float32), mean, std


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random flips and 90-degree turns (axial patches have no preferred orientation), in-plane
    only; 3D blocks (B, 1, D, P, P) also a z flip (the slice order has no preferred sense)."""
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(-1)
    if torch.rand((), generator=gen) < 0.5:
        x = x.flip(-2)
    x = torch.rot90(x, int(torch.randint(0, 4, (), generator=gen)), dims=(-2, -1))
    if x.ndim == 5 and torch.rand((), generator=gen) < 0.5:
        x = x.flip(-3)
    return x


def info_nce(z: torch.Tensor, r: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE between matching rows of z and r (B, D)."""
    z, r = F.normalize(z, dim=1), F.normalize(r, dim=1)
    logits = z @ r.T / temperature  # (B, B)
    target = torch.arange(len(z))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def weights_info(
    mcfg: ModelConfig, stage: int, mean: np.ndarray, std: np.ndarray, extra: dict
) -> dict:
    return {
        "kind": "lungpath",
        "stage": stage,
        "model": asdict(mcfg),
        "radiomics_mean": mean.tolist(),
        "radiomics_std": std.tolist(),
        "training": extra,
    }


def train_lungpath(cfg: TrainConfig, mcfg: ModelConfig, config_dict: dict) -> Path:
    check_dims(cfg, mcfg)
    torch.set_num_threads(cfg.threads)
    info = D.init_distributed(torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    run = RunLog(cfg.output_dir, enabled=info.is_main)
    run.write_config({"stage": "lungpath", **config_dict})
    t_start = time.time()
    patches, desc, facts = patch_bank(cfg, mcfg.radiomics)
    desc_z, mean, std = standardise(desc)
    logger.info("patch bank: %s (%.1f s)", facts, time.time() - t_start)
    model = LungDenoiser(mcfg.net, desc.shape[1])
    ddp = model
    if info.enabled:
        ddp = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
    sched = GaussianDiffusion(
        mcfg.diffusion.num_timesteps,
        mcfg.diffusion.schedule,
        mcfg.diffusion.beta_start,
        mcfg.diffusion.beta_end,
        "epsilon",
    )
    T = sched.num_timesteps
    gen = torch.Generator().manual_seed(cfg.seed + 1000 * info.rank)
    x_all, r_all = torch.from_numpy(patches)[:, None], torch.from_numpy(desc_z)  # (N,1,[D,]P,P)
    common = {
        **facts,
        "data_dirs": list(cfg.data_dirs),
        "seed": cfg.seed,
        "world_size": info.world_size,
        "bank_seconds": time.time() - t_start,
    }
    for stage, steps in ((1, cfg.stage1_steps), (2, cfg.stage2_steps)):
        optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        lr_at = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, cfg.lr, total_steps=max(steps, 1), pct_start=0.05
        )
        t0, losses, nces = time.time(), [], []
        for step in range(1, steps + 1):
            idx = torch.randint(0, len(x_all), (cfg.batch_size,), generator=gen)
            x0 = augment(x_all[idx], gen)
            t = torch.randint(0, T, (cfg.batch_size,), generator=gen)
            noise = torch.randn(x0.shape, generator=gen)
            eps, _, z, r = ddp(sched.add_noise(x0, noise, t), t, r_all[idx] if stage == 2 else None)
            loss = F.mse_loss(eps, noise)
            nce = torch.zeros(())
            if stage == 2:
                ramp = min(1.0, step / max(cfg.warmup_steps, 1))
                keep = t < cfg.distill_max_t
                if keep.sum() >= 2:
                    nce = info_nce(z[keep], r[keep], cfg.temperature)
                loss = loss + cfg.infonce_weight * ramp * nce
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            lr_at.step()
            losses.append(loss.item())
            nces.append(nce.item())
            minutes = (time.time() - t0) / 60
            if step % cfg.log_every == 0 or step == steps:
                row = {
                    "stage": stage,
                    "epoch": step,
                    "step": step,
                    "loss": float(np.mean(losses[-cfg.log_every :])),
                    "infonce": float(np.mean(nces[-cfg.log_every :])),
                    "minutes": minutes,
                }
                run.log(row, ("loss", "infonce"))
                if info.is_main:
                    logger.info(
                        "stage %d step %d loss %.4f infonce %.3f %.1f min",
                        stage,
                        step,
                        row["loss"],
                        row["infonce"],
                        minutes,
                    )
            if cfg.max_minutes and minutes > cfg.max_minutes:
                logger.warning(
                    "stage %d: stopping at step %d after %.1f min (max_minutes)",
                    stage,
                    step,
                    minutes,
                )
                break
        extra = {
            **common,
            "steps": step if steps else 0,
            "planned_steps": steps,
            "minutes": (time.time() - t0) / 60,
            "final_loss": float(np.mean(losses[-100:])) if losses else None,
        }
        if info.is_main:
            save_weights(
                run.dir / f"stage{stage}.safetensors",
                model,
                weights_info(mcfg, stage, mean, std, extra),
            )
        D.barrier(info)
    if info.is_main:
        logger.info("total %.1f min", (time.time() - t_start) / 60)
    D.shutdown(info)
    return run.dir


def train_from_args(args, base: dict) -> Path:
    """``medrefine train --stage lungpath``: the config file's ``train`` section plus ``net``,
    ``diffusion`` and ``radiomics``; flags -o, --steps... override (--epochs sets both stages'
    steps, --batch-size, --lr, --seed, --max-minutes, --data for one data folder)."""
    cfg, mcfg = configs_from_args(args, base)
    return train_lungpath(cfg, mcfg, {"train": asdict(cfg), **asdict(mcfg)})


def configs_from_args(args, base: dict) -> tuple[TrainConfig, ModelConfig]:
    """The training and model configs ``train_from_args`` runs, built, not run."""
    from medrefine.config import build_dataclass

    sections = {k: v for k, v in base.items() if k != "stage"}
    train = dict(sections.get("train", {}))
    for key, value in [
        ("output_dir", args.output_dir),
        ("batch_size", args.batch_size),
        ("lr", args.lr),
        ("seed", args.seed),
        ("max_minutes", args.max_minutes),
    ]:
        if value is not None:
            train[key] = value
    if args.epochs is not None:
        train["stage1_steps"] = train["stage2_steps"] = args.epochs
    if args.data_dir:
        train["data_dirs"] = [args.data_dir]
    cfg = build_dataclass(TrainConfig, train, "lungpath train")
    model = {k: sections[k] for k in ("net", "diffusion", "radiomics") if k in sections}
    mcfg = build_dataclass(ModelConfig, model, "lungpath model")
    return cfg, mcfg
