"""``medrefine train``: train the coarse model, the diffusion refiner, or both.

Keeps the design's flags (``--model cpunet|diffusion|both``, ``--data_dir``, ``--output_dir``,
``--epochs``, ``--batch_size``, ``--lr``, ``--device``) beside ``--stage coarse|refiner|both``.
A ``--config`` YAML/JSON file holds everything else; explicit flags override it.
``--stage presence`` fits a binary preset's image-level gate (``training.presence``).
``--dry-run`` builds the configs a run would use, checks that the data folders and weights
files they name exist, prints them as JSON and trains nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

from medrefine.config import build_dataclass, load_config_file
from medrefine.errors import ConfigError
from medrefine.models.registry import ENCODERS

logger = logging.getLogger(__name__)

STAGE_ALIASES = {"cpunet": "coarse", "coarse": "coarse", "diffusion": "refiner",
                 "refiner": "refiner", "both": "both", "inpaint": "inpaint",
                 "lungpath": "lungpath", "presence": "presence"}


def add_parser(sub) -> None:
    p = sub.add_parser("train", help="train the coarse model and/or the diffusion refiner",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", "--model", dest="stage", default=None,
                   choices=sorted(STAGE_ALIASES), help="what to train (default: both)")
    p.add_argument("--config", type=Path, help="YAML/JSON training config")
    p.add_argument("--data", "--data_dir", "--data-dir", dest="data_dir",
                   help="folder with images/ and masks/ (and optionally manifest.json)")
    p.add_argument("-o", "--output_dir", "--output-dir", dest="output_dir",
                   help="run folder (default ./checkpoints)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch_size", "--batch-size", dest="batch_size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"])
    p.add_argument("--seed", type=int)
    p.add_argument("--arch", choices=["cpunet", "unet", "unet3plus"],
                   help="coarse architecture (default cpunet)")
    p.add_argument("--encoder", choices=list(ENCODERS))
    p.add_argument("--size", type=int, help="model grid side in pixels (default 256)")
    p.add_argument("--num-classes", type=int, help="foreground classes (multi-class masks)")
    p.add_argument("--mask-dir", help="mask sub-folder name (default masks; a+b: a label map "
                   "stacked from binary folders, label 1 from a, label 2 from b on top)")
    p.add_argument("--coarse-weights", "--cpunet_weights", dest="coarse_weights",
                   help="coarse weights the refiner learns to correct (stage refiner)")
    p.add_argument("--cv-folds", type=int,
                   help="coarse stage: split the train cases into K folds (with --cv-fold)")
    p.add_argument("--cv-fold", type=int,
                   help="coarse stage: train on all train folds but this one (0..K-1)")
    p.add_argument("--coarse-fold-weights", nargs="+",
                   help="refiner stage: the K fold models (any order) whose out-of-fold "
                        "predictions give the refiner realistic mistakes to fix")
    p.add_argument("--keep-epochs", type=int, nargs="+",
                   help="coarse stage: also keep these epochs' weights (epoch_K.safetensors)")
    p.add_argument("--max-minutes", type=float, help="stop after this wall time")
    p.add_argument("--resume", action="store_true", help="continue the run in --output_dir")
    p.add_argument("--no-amp", action="store_true", help="train in float32 (no bf16 autocast)")
    p.add_argument("--no-pretrained", action="store_true",
                   help="do not load ImageNet encoder weights")
    p.add_argument("--workers", type=int, help="data loader worker processes (default 0)")
    p.add_argument("--dry-run", action="store_true",
                   help="build the configs this run would use, check that the data folders "
                        "and weights files they name exist, print them as JSON; train nothing")
    p.set_defaults(func=run)


def _coarse_config(args, base: dict):
    from medrefine.training.coarse import CoarseTrainConfig
    from medrefine.training.loop import switch_overrides

    data = dict(base["coarse"] if "coarse" in base else
                {k: v for k, v in base.items() if k not in ("stage", "refiner")})
    model = dict(data.get("model", {}))
    pre = dict(data.get("preprocess", {}))
    for key, value in [("data_dir", args.data_dir), ("epochs", args.epochs),
                       ("batch_size", args.batch_size), ("lr", args.lr),
                       ("device", args.device), ("seed", args.seed),
                       ("mask_dir", args.mask_dir), ("max_minutes", args.max_minutes),
                       ("workers", args.workers), ("cv_folds", args.cv_folds),
                       ("cv_fold", args.cv_fold), ("keep_epochs", args.keep_epochs)]:
        if value is not None:
            data[key] = value
    data["output_dir"] = str(Path(args.output_dir or data.get("output_dir", "checkpoints")) /
                             ("coarse" if args.stage == "both" else ""))
    if args.arch:
        model["name"] = args.arch
    if args.encoder:
        model["encoder"] = args.encoder
    if args.arch == "unet3plus" and not args.encoder:
        model["encoder"] = "scratch"
    if args.num_classes:
        model["num_classes"] = args.num_classes
        data.setdefault("class_names", [f"class{i}" for i in range(1, args.num_classes + 1)])
    if args.size:
        pre["size"] = [args.size, args.size]
    data.update(model=model, preprocess=pre)
    data.update(switch_overrides(args))
    if "data_dir" not in data:
        raise ConfigError("train needs --data DIR (a folder with images/ and masks/)")
    return build_dataclass(CoarseTrainConfig, data, "coarse config")


def _presence_config(args, base: dict):
    from medrefine.training.presence import PresenceTrainConfig

    data = dict(base.get("presence", {}))
    for key, value in [("data_dir", args.data_dir), ("device", args.device), ("seed", args.seed),
                       ("mask_dir", args.mask_dir)]:
        if value is not None:
            data[key] = value
    if args.coarse_weights:
        data["coarse_weights"] = [args.coarse_weights]
    data["output_dir"] = str(args.output_dir or data.get("output_dir", "checkpoints"))
    if "data_dir" not in data:
        raise ConfigError("train --stage presence needs --data DIR (images/ and masks/, some "
                          "masks empty)")
    return build_dataclass(PresenceTrainConfig, data, "presence config")


def stage_configs(args, base: dict) -> dict[str, Any]:
    """The config of each stage ``args.stage`` trains, built as the run builds it (stage name
    -> dataclass; ``both``: coarse and refiner, the refiner reading the coarse run's
    ``best.safetensors``)."""
    if args.stage == "inpaint":
        from medrefine.inpaint.train import config_from_args

        return {"inpaint": config_from_args(args, base)}
    if args.stage == "lungpath":
        from medrefine.lungpath.train import configs_from_args

        train, model = configs_from_args(args, base)
        return {"lungpath": train, "lungpath model": model}
    if args.stage == "presence":
        return {"presence": _presence_config(args, base)}
    out: dict[str, Any] = {}
    if args.stage in ("coarse", "both"):
        out["coarse"] = _coarse_config(args, base)
    if args.stage in ("refiner", "both"):
        from medrefine.training.refiner import refiner_config_from_args

        if args.stage == "both" and not args.coarse_weights:
            args.coarse_weights = str(Path(out["coarse"].output_dir) / "best.safetensors")
        out["refiner"] = refiner_config_from_args(args, base)
    return out


# config fields that name inputs: data folders and weights files (never the outputs)
_INPUT_SUFFIXES = ("data_dir", "data_dirs", "device_dir", "_weights")


def missing_inputs(configs: dict[str, Any]) -> list[str]:
    """``stage.field: path`` for each data folder or weights file the configs (from
    ``stage_configs``) name that does not exist, less the coarse model the same run writes."""
    produced = [str(Path(configs["coarse"].output_dir) / "best.safetensors")] \
        if "coarse" in configs else []
    missing = []
    for stage, cfg in configs.items():
        for name, value in dataclasses.asdict(cfg).items():
            if not name.endswith(_INPUT_SUFFIXES) or not value:
                continue
            for path in [value] if isinstance(value, str) else value:
                if str(path) not in produced and not Path(path).exists():
                    missing.append(f"{stage}.{name}: {path}")
    return missing


def _dry_run(args, base: dict) -> int:
    configs = stage_configs(args, base)
    print(json.dumps({s: dataclasses.asdict(c) for s, c in configs.items()}, indent=2))
    missing = missing_inputs(configs)
    if missing:
        where = f"{args.config}: " if args.config else ""
        raise ConfigError(f"{where}{len(missing)} input(s) not found: {'; '.join(missing)} "
                          "(paths are relative to the folder train runs in)")
    return 0


def run(args) -> int:
    base = load_config_file(args.config) if args.config else {}
    args.stage = STAGE_ALIASES[args.stage or base.get("stage", "both")]
    if getattr(args, "dry_run", False):
        return _dry_run(args, base)
    if args.stage == "inpaint":  # the X-ray inpainting model (medrefine.inpaint)
        from medrefine.inpaint.train import train_from_args

        print(f"inpainting model: {train_from_args(args, base) / 'best.safetensors'}")
        return 0
    if args.stage == "lungpath":  # DiffSegLung, two stages (medrefine.lungpath)
        from medrefine.lungpath.train import train_from_args as train_lungpath

        run_dir = train_lungpath(args, base)
        if os.environ.get("RANK", "0") == "0":
            print(f"lung-pathology model: {run_dir / 'stage2.safetensors'}")
        return 0
    if args.stage == "presence":  # the image-level gate of a binary preset (empty frames)
        from medrefine.training.presence import fit_presence, summary_lines

        path = fit_presence(_presence_config(args, base))
        if os.environ.get("RANK", "0") == "0":
            print("\n".join(summary_lines(path)))
            print(f"presence gate: {path}")
        return 0
    if args.stage in ("coarse", "both"):
        from medrefine.training.coarse import train_coarse

        cfg = _coarse_config(args, base)
        run_dir = train_coarse(cfg)
        if os.environ.get("RANK", "0") == "0":  # one line per run, not per torchrun process
            print(f"coarse model: {run_dir / 'best.safetensors'}")
        if args.stage == "both":
            args.coarse_weights = str(run_dir / "best.safetensors")
    if args.stage in ("refiner", "both"):
        from medrefine.training.refiner import train_refiner_from_args

        train_refiner_from_args(args, base)
    return 0
