"""Write a preset's model card from a training run folder and the output of
``medrefine evaluate`` (its printed table, captured to a file, and its summary.json).

    python scripts/model_card.py --preset polyp --stage coarse --run runs/polyp_coarse \
        --train-command "medrefine train ..." --eval-dir eval/polyp_coarse \
        --eval-command "medrefine evaluate ..."

Copies ``<run>/best.safetensors`` to ``src/medrefine/weights/<preset>/<stage>.safetensors`` and
writes ``MODEL_CARD.md`` beside it (one section per stage; the other stage's section is kept).
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
from dataclasses import asdict
from pathlib import Path

from medrefine.checkpoint import file_sha256, read_info
from medrefine.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- {stage}:begin -->", "<!-- {stage}:end -->"


def section(args) -> str:
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    info = read_info(run / "best.safetensors")
    manifest = Path(config["data_dir"]) / "manifest.json"
    split = json.loads(manifest.read_text())["split"] if manifest.is_file() else {}
    printed = (Path(args.eval_dir) / "printed.txt").read_text().rstrip()
    wall, last = 0.0, 0.0  # runs resumed by older versions restarted "minutes" at 0
    for row in rows:
        if row["minutes"] < last:
            wall += last
        last = row["minutes"]
    wall += last
    best_epoch = info["training"].get("epoch")
    val_key = "val_dice" if args.stage == "coarse" else "val_dice_refined"
    lines = [
        BEGIN.format(stage=args.stage),
        f"## {args.stage} model: `{args.stage}.safetensors`",
        "",
        f"- sha256: `{file_sha256(run / 'best.safetensors')}`",
        f"- architecture: `{json.dumps(info.get('model') or info.get('denoiser'))}`",
    ]
    if args.stage in ("refiner", "fixer"):
        lines.append(f"- diffusion: `{json.dumps(info['diffusion'])}`")
        defaults = json.dumps(info["refine_defaults"])
        lines.append(f"- default refinement (chosen on val): `{defaults}`")
    post = json.dumps(asdict(get_preset(args.preset).postprocess))
    val = info["training"].get(val_key, float("nan"))
    lines += [
        f"- preprocessing: `{json.dumps(info['preprocess'])}`",
        f"- post-processing (the preset's): `{post}`",
        f"- data: `{config['data_dir']}` (split from its manifest.json: "
        + ", ".join(f"{k} {len(v)}" for k, v in split.items()) + ")",
        f"- seed: {config['seed']}; epochs: {len(rows)} run of {config['epochs']} planned; "
        f"best epoch on val: {best_epoch} (val Dice {val:.4f})",
        f"- wall time: {wall:.1f} min on {args.machine}",
        "",
        "Training command:",
        "```bash",
        args.train_command,
        "```",
        "",
        "Test metrics, as printed by:",
        "```bash",
        args.eval_command,
        "```",
        "```",
        printed,
        "```",
        *(fixer_lines(args.fixer, info) if args.stage != "coarse" and args.fixer else []),
        END.format(stage=args.stage),
    ]
    return "\n".join(lines)


def inpaint_section(args) -> str:
    """The inpainting model's section: data, split, seed, epochs, wall time, and the test
    tables as ``scripts/inpaint_benchmark.py`` printed them (``<eval-dir>/printed.txt``)."""
    run = Path(args.run)
    config = json.loads((run / "config.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    info = read_info(run / "best.safetensors")
    splits = []
    for d in config["data_dirs"]:
        split = json.loads((Path(d) / "manifest.json").read_text())["split"]
        splits.append(f"`{d}` (" + ", ".join(f"{k} {len(v)}" for k, v in split.items()) + ")")
    printed = (Path(args.eval_dir) / "printed.txt").read_text().rstrip()
    lines = [
        BEGIN.format(stage="inpaint"),
        "## inpainting model: `inpaint.safetensors`",
        "",
        f"- sha256: `{file_sha256(run / 'best.safetensors')}`",
        f"- model: `{json.dumps(info['model'])}`",
        f"- data: train splits of {' and '.join(splits)}; {info.get('train_cases')} distinct "
        f"train images; {info.get('device_outlines')} device outlines (label 2 of the first "
        "folder's masks_multiclass, train cases only); val: the first folder's val split",
        f"- seed: {config['seed']}; epochs: {len(rows)} run of {config['epochs']} planned "
        f"({config['steps_per_epoch']} steps of {config['batch_size']} crops each); best epoch "
        f"on val: {info.get('epoch')} (val PSNR {info.get('val_psnr', float('nan')):.2f} dB, "
        "one step, one sample, hole pixels, 256 grid)",
        f"- wall time: {rows[-1]['minutes']:.1f} min on {args.machine}",
        "",
        "Training command:",
        "```bash",
        args.train_command,
        "```",
        "",
        "Test metrics, as printed by:",
        "```bash",
        args.eval_command,
        "```",
        "```",
        printed,
        "```",
        END.format(stage="inpaint"),
    ]
    return "\n".join(lines)


def fixer_lines(fixer_dir: str, info: dict) -> list[str]:
    """The refiner as a mask fixer: the mask sources it trained on, what the calibration
    chose on val per input kind, and the test table of ``scripts/mask_fixer_eval.py``."""
    res = json.loads((Path(fixer_dir) / "results.json").read_text())
    training = info["training"]
    calib = training.get("calibration", {})
    lines = ["", "### As a mask fixer", "",
             f"- mask sources (shares): `{json.dumps(training.get('mask_sources'))}`",
             f"- other segmenters trained on: `{json.dumps(training.get('segmenter_weights'))}`",
             f"- auto strength (calibrated on val): `{json.dumps(info.get('auto_strength'))}`",
             "", "Val, per input kind (Dice): the input, auto strength with the leave-alone gate "
             "(the default), auto strength alone, and the best fixed strength:", "",
             "| input | input Dice | auto + gate | auto alone | best fixed (strength) |",
             "|---|---|---|---|---|"]
    for kind, row in calib.get("per_kind", {}).items():
        alone = row.get("auto_strength_only")
        lines.append(f"| {kind} | {row['input']:.4f} | {row['auto']:.4f} | "
                     + (f"{alone:.4f}" if alone is not None else "") + " | "
                     f"{row['best_fixed']:.4f} ({row['best_fixed_strength']}) |")
    own = training.get("calibration_own")
    if own:
        row = own["per_kind"]["coarse"]
        lines += ["", f"On the coarse model's own masks (`segment`), calibrated separately "
                  f"(`medrefine calibrate --own-coarse`): table `{json.dumps(own['auto'])}`; val "
                  f"Dice {row['input']:.4f} as they are, {row['auto']:.4f} refined (0 in the "
                  "table: kept as they are, refined only for the uncertainty)."]
    gate = calib.get("gate")
    if gate:
        lines += ["", f"Leave-alone gate (val, clean and colour/contrast/blur-shifted images, "
                  f"{gate['cases']} inputs): mean Dice {gate['mean_dice_ungated']:.4f} without, "
                  f"{gate['mean_dice_gated']:.4f} with it; {100 * gate['left_alone_share']:.1f}% "
                  "left alone."]
    lines += ["", f"Test split, `python scripts/mask_fixer_eval.py --preset ... --split "
              f"{res['split']}` (every mask a 0/255 PNG through `medrefine refine`; scored by "
              "`medrefine evaluate --pred`):", "",
              "| source | input Dice / HD95 px | refined Dice / HD95 px | review Spearman |",
              "|---|---|---|---|"]
    coarse = res.get("coarse")
    if coarse:
        lines.append(f"| our coarse model (`segment`) | {coarse['coarse']['dice']:.4f} / "
                     f"{coarse['coarse']['hd95']:.1f} | {coarse['refined']['dice']:.4f} / "
                     f"{coarse['refined']['hd95']:.1f} | {coarse['review_spearman']:.2f} |")
    for name, row in res.get("outside", {}).items():
        lines.append(f"| {name} (never trained on) | {row['input']['dice']:.4f} / "
                     f"{row['input']['hd95']:.1f} | {row['refined']['dice']:.4f} / "
                     f"{row['refined']['hd95']:.1f} | {row['review_spearman']:.2f} |")
    boxes = res.get("boxes")
    if boxes:
        lines.append(f"| GT box per object, jittered <= 5% | {boxes['box_as_mask']['dice']:.4f} /"
                     f" {boxes['box_as_mask']['hd95']:.1f} | {boxes['refined']['dice']:.4f} / "
                     f"{boxes['refined']['hd95']:.1f} | {boxes['review_spearman']:.2f} |")
        lines.append(f"| OpenCV GrabCut on the same boxes | | {boxes['grabcut']['dice']:.4f} / "
                     f"{boxes['grabcut']['hd95']:.1f} | |")
    shifts = res.get("shifts")
    if shifts:
        lines += ["", "Shifted test images (colour, contrast, blur: the look of another device), "
                  "our coarse model's masks refined with and without the leave-alone gate "
                  "(Dice / HD95 px):", "",
                  "| shift | input | refined (gate on, default) | refined, gate off | left alone |",
                  "|---|---|---|---|---|"]
        for kind, row in shifts.items():
            cells = [f"{row[k]['dice']:.4f} / {row[k]['hd95']:.1f}"
                     for k in ("input", "refined", "refined_no_gate")]
            lines.append(f"| {kind} | " + " | ".join(cells) + f" | {row['left_alone']} |")
    return lines


def write_json_card(path: Path, args) -> None:
    """The machine-readable side of the card: per stage, the weights hash, the training
    command and the summary.json that ``medrefine evaluate`` wrote."""
    data = json.loads(path.read_text()) if path.is_file() else {"preset": args.preset}
    run = Path(args.run)
    if args.stage == "inpaint":
        summary = json.loads((Path(args.eval_dir) / "results.json").read_text())
        summary = {k: v for k, v in summary.items() if k != "rows"}
    else:
        summary = json.loads((Path(args.eval_dir) / "summary.json").read_text())
    data[args.stage] = {
        "weights": f"{args.stage}.safetensors",
        "sha256": file_sha256(run / "best.safetensors"),
        "training_command": args.train_command,
        "training_config": json.loads((run / "config.json").read_text()),
        "evaluate_command": args.eval_command,
        "test_summary": summary,
    }
    if args.stage in ("refiner", "fixer") and args.fixer:
        data[args.stage]["mask_fixer_test"] = json.loads(
            (Path(args.fixer) / "results.json").read_text())
        data[args.stage]["calibration_val"] = read_info(run / "best.safetensors")[
            "training"].get("calibration")
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", required=True)
    p.add_argument("--stage", choices=["coarse", "refiner", "fixer", "inpaint"], required=True,
                   help="fixer: a preset's separate refiner for other tools' masks and boxes")
    p.add_argument("--run", required=True)
    p.add_argument("--eval-dir", required=True)
    p.add_argument("--train-command", required=True)
    p.add_argument("--eval-command", required=True)
    p.add_argument("--machine", default=f"{platform.machine()} CPU, 2 cores (this project's "
                   "workstation class), bf16 autocast")
    p.add_argument("--title", default="")
    p.add_argument("--fixer", help="refiner: the --out folder of scripts/mask_fixer_eval.py")
    args = p.parse_args()
    folder = ROOT / "src" / "medrefine" / "weights" / args.preset
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(args.run) / "best.safetensors", folder / f"{args.stage}.safetensors")
    card = folder / "MODEL_CARD.md"
    stages = ("inpaint",) if args.stage == "inpaint" else ("coarse", "refiner")
    text = card.read_text() if card.is_file() else (
        f"# medrefine preset `{args.preset}`\n\n{args.title}\n\n" + "\n\n".join(
            f"{BEGIN.format(stage=st)}\n{END.format(stage=st)}" for st in stages) + "\n")
    pattern = re.compile(re.escape(BEGIN.format(stage=args.stage)) + ".*?" +
                         re.escape(END.format(stage=args.stage)), re.S)
    make = inpaint_section if args.stage == "inpaint" else section
    if not pattern.search(text):  # a stage the card has no section for yet
        text = text.rstrip("\n") + f"\n\n{BEGIN.format(stage=args.stage)}\n" \
            f"{END.format(stage=args.stage)}\n"
    text = pattern.sub(lambda _: make(args), text)
    card.write_text(text)
    write_json_card(folder / "model_card.json", args)
    print(f"wrote {card} and {folder / (args.stage + '.safetensors')}")


if __name__ == "__main__":
    main()
