"""Ship the DiffSegLung weights and write their model card from the run folder and the printed
outputs of the evaluation scripts (nothing typed by hand).

    python scripts/lungpath_model_card.py --run runs/lungpath \
        --train-command "medrefine -v train --stage lungpath ..." \
        --wall-log runs/lungpath.log \
        --printed runs/lungpath_ablation/printed.txt --printed-command "python scripts/..." \
        [--printed FILE --printed-command CMD ...]

Copies ``<run>/stage2.safetensors`` (the distilled model, the default) to
``src/medrefine/weights/lungpath/lungpath.safetensors`` and ``stage1.safetensors`` (diffusion
only, for the ablation) to ``lungpath_stage1.safetensors``; writes MODEL_CARD.md and
model_card.json beside them.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
from pathlib import Path

from medrefine.checkpoint import file_sha256, read_info

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "src" / "medrefine" / "weights" / "lungpath"


def wall_time(log: Path) -> str | None:
    """'Elapsed (wall clock) time' as /usr/bin/time -v printed it at the end of the log."""
    m = re.search(r"Elapsed \(wall clock\) time.*: ([0-9:.]+)", log.read_text())
    return m.group(1) if m else None


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--run", required=True)
    ap.add_argument("--train-command", required=True)
    ap.add_argument("--wall-log")
    ap.add_argument("--printed", action="append", default=[])
    ap.add_argument("--printed-command", action="append", default=[])
    ap.add_argument("--summary", default="", help="one paragraph at the top")
    args = ap.parse_args()
    run = Path(args.run)
    DEST.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(run / "stage2.safetensors", DEST / "lungpath.safetensors")
    shutil.copyfile(run / "stage1.safetensors", DEST / "lungpath_stage1.safetensors")
    config = json.loads((run / "config.json").read_text())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    infos = {s: read_info(run / f"stage{s}.safetensors") for s in (1, 2)}
    wall = wall_time(Path(args.wall_log)) if args.wall_log else None
    card = {
        "preset": "lungpath",
        "weights": {
            "lungpath.safetensors": file_sha256(DEST / "lungpath.safetensors"),
            "lungpath_stage1.safetensors": file_sha256(DEST / "lungpath_stage1.safetensors"),
        },
        "training_command": args.train_command,
        "training_config": config,
        "data": {
            "train_dirs": config["train"]["data_dirs"],
            "split": "manifest train split",
            "patches": infos[2]["training"]["patches"],
            "slices": infos[2]["training"]["slices"],
        },
        "seed": config["train"]["seed"],
        "steps": {
            f"stage{s}": {
                "run": infos[s]["training"]["steps"],
                "planned": infos[s]["training"]["planned_steps"],
                "minutes": round(infos[s]["training"]["minutes"], 1),
                "final_loss": infos[s]["training"]["final_loss"],
            }
            for s in (1, 2)
        },
        "wall_time": wall,
        "machine": f"{platform.machine()}, {config['train']['threads']} thread(s), CPU shared "
        "with other trainings",
        "final_metrics_rows": rows[-2:],
        "evaluations": [
            {"command": c, "printed": Path(p).read_text().rstrip()}
            for p, c in zip(args.printed, args.printed_command, strict=True)
        ],
    }
    (DEST / "model_card.json").write_text(json.dumps(card, indent=2) + "\n")
    lines = [
        "# medrefine model `lungpath` (DiffSegLung, issue 13)",
        "",
        args.summary,
        "",
        "- weights: `lungpath.safetensors` (distilled, stage 2; the default), "
        "`lungpath_stage1.safetensors` (diffusion only, stage 1; for the ablation)",
        *[f"- sha256 `{k}`: `{v}`" for k, v in card["weights"].items()],
        f"- model: `{json.dumps(infos[2]['model'])}`",
        f"- data: train splits of {', '.join(f'`{d}`' for d in card['data']['train_dirs'])}"
        f" ({card['data']['slices']} slices, {card['data']['patches']} lung patches of "
        f"{config['train']['patch']} px; 8-bit slices read as a lung window, no HU)",
        f"- seed: {card['seed']}; steps: {json.dumps(card['steps'])}",
        f"- wall time (both stages, /usr/bin/time): {wall} on {card['machine']}",
        "",
        "Training command:",
        "```bash",
        args.train_command,
        "```",
        "",
    ]
    for ev in card["evaluations"]:
        lines += [
            "As printed by:",
            "```bash",
            ev["command"],
            "```",
            "```",
            ev["printed"],
            "```",
            "",
        ]
    (DEST / "MODEL_CARD.md").write_text("\n".join(lines))
    print(f"wrote {DEST}")


if __name__ == "__main__":
    main()
