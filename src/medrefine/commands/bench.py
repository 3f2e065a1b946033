"""``medrefine bench``: speed and memory of each stage on a shipped sample image."""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="print per-stage speed and peak memory (JSON + table)")
    p.add_argument("--preset", default="polyp", help="shipped model set (default polyp)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and configurations")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", type=Path, help="also write the JSON document here")
    p.set_defaults(func=run)


def run(args) -> int:
    from medrefine.bench import format_table, run_bench

    result = run_bench(args.preset, quick=args.quick, device=args.device, threads=args.threads)
    text = json.dumps(result, indent=2)
    print(text)
    print(format_table(result))
    if args.json:
        from medrefine.training.runlog import atomic_write_text

        args.json.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(args.json, text)
    return 0
