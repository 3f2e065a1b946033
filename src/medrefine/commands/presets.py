"""``medrefine presets``: every shipped preset (segmentation, inpainting, lung pathology), what
it segments, whether its weights are installed, and the test figures its model card holds."""

from __future__ import annotations

import argparse
import json

from medrefine.presets import DEFAULT_PRESETS, Preset, all_presets, card_figures


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        "presets",
        help="list the shipped presets: task, what they segment, weights, test figures",
        description="List every shipped preset with its task, what it segments, whether its "
        "weights are installed and the headline test figures of its model_card.json "
        "(- where the card holds none).",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead")
    parser.set_defaults(func=run)
    return parser


def describe(preset: Preset) -> dict:
    """What ``medrefine presets`` shows of one preset (JSON-ready)."""
    folder = preset.folder
    return {
        "name": preset.name,
        "task": preset.task,
        "default": DEFAULT_PRESETS[preset.task] == preset.name,
        "description": preset.description,
        "installed": preset.installed,
        "weights": sorted(p.name for p in folder.glob("*.safetensors")),
        "folder": str(folder),
        "model_card": str(preset.model_card) if preset.model_card.is_file() else None,
        "test_figures": card_figures(preset),
    }


def format_figures(figures: list[dict]) -> str:
    """``test (n=40): coarse Dice 0.943, refined Dice 0.9496``; ``-`` for none."""
    if not figures:
        return "-"
    groups: dict[tuple, list[str]] = {}
    for f in figures:
        groups.setdefault((f["split"], f["n"]), []).append(f"{f['name']} {f['value']:.4g}")
    parts = []
    for (split, n), items in groups.items():
        where = (split or "") + (f" (n={n})" if n is not None else "")
        parts.append((f"{where.strip()}: " if where else "") + ", ".join(items))
    return "; ".join(parts)


def format_table(rows: list[dict]) -> str:
    width = max(len(r["name"]) for r in rows) + 2
    lines = []
    for r in rows:
        name = r["name"] + (" *" if r["default"] else "")
        installed = "installed" if r["installed"] else "weights not installed"
        if r["installed"]:
            installed += f" ({', '.join(w.removesuffix('.safetensors') for w in r['weights'])})"
        lines += [
            f"{name:<{width}}  {r['task']:<14}  {installed}",
            f"    {r['description']}",
            f"    test figures: {format_figures(r['test_figures'])}",
        ]
    lines.append("* the default preset of its task; figures as the model card holds them")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = [describe(preset) for preset in all_presets()]
    print(json.dumps(rows, indent=2) if args.json else format_table(rows))
    return 0
