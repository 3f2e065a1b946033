"""Diffusion refinement of a coarse mask, conditioned on the image.

    x_t0 = add_noise(coarse, t0)            # strength picks t0: how much of the mask is "forgotten"
    for t in timesteps (t0 down to 0):      # DDIM (Gaussian) or posterior sampling (Bernoulli)
        x0_hat = denoiser(x_t, t, cond=(image, coarse))
        x_t = step(x0_hat, x_t, t -> t_prev)
    N samples run side by side along the batch axis; their mean is the refined mask, their
    spread (and the entropy of the mean) the uncertainty.

``strength="auto"`` picks t0 per image from the input itself: the refiner's x0 estimate from the
input noised to a probe strength disagrees little with a good mask and much with a box, and the
disagreement picks the strength from a table calibrated on val (``AutoStrength``). Where the
refined mask is in doubt (its review score above ``AutoStrength.max_doubt``, also calibrated on
val, with colour, contrast and blur shifts), the refiner is unsure of its own correction and the
input mask is returned unchanged (``leave_alone``).

``from_noise=True`` samples from pure noise at t = T-1 instead (how MedSegDiff samples), for
the side-by-side comparisons in the benchmarks.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from medrefine.checkpoint import load_into, read_info
from medrefine.diffusion import DiffusionConfig, build_diffusion, refinement_timesteps
from medrefine.errors import ConfigError, InputError
from medrefine.fusion import FUSIONS, binary_entropy, fuse, review_score
from medrefine.inference import preprocess_config_from, resolve_device
from medrefine.models.blocks import fuse_conv_bn
from medrefine.models.denoiser import Denoiser, DenoiserConfig
from medrefine.preprocess import PreprocessConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RefineParams:
    """User-facing refinement settings.

    Attributes:
        steps: denoising steps from t0 to 0.
        strength: t0 / T in (0, 1]; higher = the coarse mask is trusted less.
        samples: independent samples (batched); > 1 gives a sample-spread uncertainty.
        seed: noise seed; the same seed gives the same mask.
        eta: DDIM stochasticity (0 deterministic after the initial noise, 1 = DDPM-like).
        fusion: how samples are combined: mean, vote or staple.
        leave_alone: return the input mask unchanged where the refiner is unsure of its own
            correction (review score above the weights' calibrated ``max_doubt``). Off for box
            prompts, which are never the answer themselves.
        keep_input: return the input mask as it is; the refiner runs (at the auto strength's
            probe) only for its uncertainty and the review score, as for a mask it finds good
            (the ``litemedsam-only`` box engine: LiteMedSAM's mask, judged, not corrected).
    """

    steps: int = 4
    strength: float | str = 0.3
    samples: int = 1
    seed: int = 0
    eta: float = 0.0
    fusion: str = "mean"
    leave_alone: bool = True
    keep_input: bool = False

    def __post_init__(self):
        if self.steps < 1 or self.steps > 1000:
            raise ConfigError(f"steps must be in 1..1000, got {self.steps}")
        if isinstance(self.strength, str) and self.strength != "auto":
            try:
                object.__setattr__(self, "strength", float(self.strength))
            except ValueError:
                raise ConfigError(f"strength must be 'auto' or a number in (0, 1], got "
                                  f"{self.strength!r}") from None
        if self.strength != "auto" and not 0 < self.strength <= 1:
            raise ConfigError(f"strength must be 'auto' or in (0, 1], got {self.strength}")
        if self.samples < 1 or self.samples > 64:
            raise ConfigError(f"samples must be in 1..64, got {self.samples}")
        if not 0 <= self.eta <= 1:
            raise ConfigError(f"eta must be in [0, 1], got {self.eta}")
        if self.fusion not in FUSIONS:
            raise ConfigError(f"fusion must be one of {FUSIONS}, got {self.fusion!r}")


@dataclass(frozen=True)
class AutoStrength:
    """How ``strength="auto"`` picks t0, calibrated on val (``training/calibrate.py``).

    Attributes:
        probe: strength at which the refiner's first x0 estimate is taken.
        edges: ascending disagreement (1 - Dice(input, estimate)) bin edges.
        strengths: the strength for each bin (one more than ``edges``); 0 keeps the input
            mask (refined at ``probe`` for its uncertainty only): the light touch a mask at
            least as good as the refiner's own needs.
        max_doubt: review score of the refined mask above which the input is left alone
            (``inf``: never).
    """

    probe: float = 0.3
    edges: tuple[float, ...] = (0.03, 0.1, 0.25)
    strengths: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7)
    max_doubt: float = float("inf")

    def __post_init__(self):
        object.__setattr__(self, "edges", tuple(float(e) for e in self.edges))
        object.__setattr__(self, "strengths", tuple(float(s) for s in self.strengths))
        if len(self.strengths) != len(self.edges) + 1 or list(self.edges) != sorted(self.edges):
            raise ConfigError("auto strength: strengths needs one value more than the ascending "
                              "edges")
        if not 0 < self.probe <= 1 or not all(0 <= s <= 1 for s in self.strengths):
            raise ConfigError("auto strength: the probe must lie in (0, 1] and the strengths "
                              "in [0, 1] (0: keep the input)")

    def pick(self, disagreement: float) -> float:
        return self.strengths[int(np.searchsorted(self.edges, disagreement, side="right"))]

    def to_dict(self) -> dict:
        return {"probe": self.probe, "edges": list(self.edges),
                "strengths": list(self.strengths),
                "max_doubt": None if np.isinf(self.max_doubt) else self.max_doubt}

    @classmethod
    def from_dict(cls, data: dict | None) -> AutoStrength:
        data = dict(data or {})
        if data.get("max_doubt") is None:
            data["max_doubt"] = float("inf")
        return cls(**data)


@dataclass
class RefineOutput:
    """All arrays on the model grid: probs/uncertainty (H, W), samples (N, H, W).

    ``strength``: the one used (auto picks it); ``disagreement``: 1 - Dice between the input and
    the probe's x0 estimate (auto only); ``left_alone``: the input was returned unchanged."""

    probs: np.ndarray
    uncertainty: np.ndarray
    samples: np.ndarray
    timesteps: list[int]
    strength: float = 0.0
    disagreement: float | None = None
    left_alone: bool = False
    doubt: float = 0.0
    # why: "refined", "kept: good as it is" (the calibrated table keeps masks the probe
    # barely disagrees with) or "kept: refiner in doubt" (review score above max_doubt)
    decision: str = "refined"

    def summary(self) -> dict:
        return {"decision": self.decision, "strength": self.strength,
                "disagreement": self.disagreement, "left_alone": self.left_alone,
                "doubt": self.doubt}


class Refiner:
    def __init__(self, model: Denoiser, diffusion_cfg: DiffusionConfig,
                 pre_cfg: PreprocessConfig, device: torch.device | str = "cpu",
                 info: dict | None = None):
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        # channels-last: the same float32 arithmetic, about 35% faster denoising steps on CPU
        self.channels_last = isinstance(model, torch.nn.Module)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.diffusion_cfg = diffusion_cfg
        self.diffusion = build_diffusion(diffusion_cfg)
        self.pre_cfg = pre_cfg
        self.info = info or {}
        self.defaults = RefineParams(**self.info.get("refine_defaults", {}))
        # auto strength and leave-alone for given masks, and (calibrated on them alone) for
        # the masks of the coarse model the refiner was trained with (``own=True``)
        self.auto = AutoStrength.from_dict(self.info.get("auto_strength"))
        own = self.info.get("auto_strength_own")
        self.auto_own = AutoStrength.from_dict(own) if own else None

    @classmethod
    def from_weights(cls, path: str | Path, device: str = "auto", fold_bn: bool = False
                     ) -> Refiner:
        """``fold_bn``: fold BatchNorm into the convolutions (inference only; see
        ``models.blocks.fuse_conv_bn``)."""
        info = read_info(path)
        if info.get("kind") != "refiner":
            raise InputError(f"{path}: holds a {info.get('kind')!r} model, not a diffusion "
                             "refiner")
        model = load_into(Denoiser(DenoiserConfig.from_dict(info["denoiser"]), pretrained=False),
                          path)
        if fold_bn:
            model = fuse_conv_bn(model)
        return cls(model, DiffusionConfig.from_dict(info["diffusion"]),
                   preprocess_config_from(info["preprocess"]), resolve_device(device), info)

    def describe(self) -> dict:
        return {"denoiser": self.model.cfg.to_dict(), "diffusion": self.diffusion_cfg.to_dict(),
                "preprocess": asdict(self.pre_cfg)}

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _start(self, coarse: torch.Tensor, n: int, t0: int, gen: torch.Generator,
               from_noise: bool = False) -> torch.Tensor:
        """x_t0 for n samples: the input mask (B=1) noised to t0 (or pure noise)."""
        diff, start = self.diffusion, coarse.expand(n, -1, -1, -1)
        if self.diffusion_cfg.kind == "gaussian":
            noise = torch.randn((n, 1, *coarse.shape[-2:]), generator=gen).to(self.device)
            return noise if from_noise else diff.add_noise(2 * start - 1, noise, t0)
        return diff.add_noise(torch.full_like(start, 0.5) if from_noise else start, t0, gen)

    def _x0(self, x_t: torch.Tensor, t: int, cond) -> torch.Tensor:
        net_in = x_t if self.diffusion_cfg.kind == "gaussian" else 2 * x_t - 1
        t_batch = torch.full((x_t.shape[0],), t, device=self.device, dtype=torch.long)
        out = self.model(self._layout(net_in), t_batch, cond)
        return self.diffusion.predict_x0(out.float(), x_t, t)

    def _as_probs(self, x0_hat: torch.Tensor) -> torch.Tensor:
        return x0_hat if self.diffusion_cfg.kind == "bernoulli" else (x0_hat + 1) / 2

    def probe_disagreement(self, coarse: torch.Tensor, cond, gen: torch.Generator,
                           probe: float | None = None) -> float:
        """1 - Dice between the input mask and the refiner's x0 estimate from the input noised
        to the probe strength: small for a mask the refiner would keep, large for a box."""
        t = refinement_timesteps(self.diffusion.num_timesteps, probe or self.auto.probe, 1)[0]
        estimate = self._as_probs(self._x0(self._start(coarse, 1, t, gen), t, cond))[0, 0] > 0.5
        given = coarse[0, 0] > 0.5
        total = float(estimate.sum() + given.sum())
        return 0.0 if total == 0 else 1.0 - 2.0 * float((estimate & given).sum()) / total

    @torch.inference_mode()
    def refine_grid(self, image01: np.ndarray, coarse_probs: np.ndarray,
                    params: RefineParams | None = None, from_noise: bool = False,
                    own: bool = False) -> RefineOutput:
        """image01 (C, H, W) and coarse_probs (H, W) on the model grid -> RefineOutput.

        ``own``: the mask is the coarse model's own (``segment``), so the auto strength and
        leave-alone calibrated on those masks apply, where the weights have them."""
        p = params or self.defaults
        auto = self.auto_own if own and self.auto_own is not None else self.auto
        if coarse_probs.shape != image01.shape[1:]:
            raise InputError(f"coarse mask shape {coarse_probs.shape} does not match the image "
                             f"grid {image01.shape[1:]}")
        dev, n, diff = self.device, p.samples, self.diffusion
        gen = torch.Generator().manual_seed(p.seed)
        image = torch.as_tensor(image01, dtype=torch.float32, device=dev)[None]
        coarse = torch.as_tensor(coarse_probs, dtype=torch.float32, device=dev)[None, None]
        cond = self.model.encode_condition(self._layout(image), self._layout(coarse))
        disagreement, strength, keep = None, p.strength, False
        if p.keep_input and not from_noise:
            strength, keep = auto.probe, True
        elif strength == "auto" and not from_noise:
            disagreement = self.probe_disagreement(coarse, cond, gen, auto.probe)
            strength = auto.pick(disagreement)
            keep = strength == 0 and p.leave_alone  # a prompt (box) is never kept
            if strength == 0:
                strength = auto.probe
        elif strength == "auto":
            strength = 1.0
        timesteps = refinement_timesteps(diff.num_timesteps, 1.0 if from_noise else strength,
                                         p.steps)
        # The sampling loop: from x_t0 down to t = 0, one x0 estimate and one step each.
        x_t = self._start(coarse, n, timesteps[0], gen, from_noise)
        for i, t in enumerate(timesteps):
            t_prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
            x0_hat = self._x0(x_t, t, cond)
            if self.diffusion_cfg.kind == "gaussian":
                x_t = diff.step(x0_hat, x_t, t, t_prev, eta=p.eta, generator=gen)
            else:
                x_t = diff.step(x0_hat, x_t, t, t_prev, generator=gen)
        samples = self._as_probs(x0_hat)[:, 0].clamp(0, 1).cpu().numpy()
        fused = fuse(samples, p.fusion)
        uncertainty = binary_entropy(fused)
        if n > 1:  # sample disagreement adds to the entropy of the fused mask
            uncertainty = np.maximum(uncertainty, 2 * samples.std(0))
        uncertainty = uncertainty.clip(0, 1)
        doubt = review_score(uncertainty, fused > 0.5)
        left_alone = keep or bool(p.leave_alone and not from_noise
                                  and doubt > auto.max_doubt)
        if left_alone:  # a good mask, or unsure of its own correction: the input stands
            fused = coarse_probs.astype(np.float32)
        decision = ("kept: as asked" if p.keep_input and keep else
                    "kept: good as it is" if keep else
                    "kept: refiner in doubt" if left_alone else "refined")
        return RefineOutput(fused.astype(np.float32), uncertainty, samples, timesteps,
                            0.0 if keep else float(strength), disagreement, left_alone, doubt,
                            decision)
