"""A markdown table of `wellwatch finetune` runs: the other frames before and after, and what was chosen.

    python benchmarks/few_frame_table.py "LABEL=RUN.finetune/report.json" ...
"""

from __future__ import annotations

import json
import sys


def row(label: str, report: dict) -> str:
    b, a = report["before"], report["after"]
    r = report["recipe"]
    # reports written before the watershed option had three values say choose_watershed
    watershed = r.get("watershed") or ("validation" if r.get("choose_watershed", True) else "keep")
    watershed = {"validation": "the strips", "train+validation": "the whole frames", "keep": "the start's"}[watershed]
    recipe = f"{r['steps']} steps, lr {r['lr']:g}, freeze {r['freeze']}, {r['augment']}; watershed: {watershed}"
    return (f"| {label} | {recipe} | {b['f1@0.5']:.3f} / {b['f1@0.75']:.3f} "
            f"| **{a['f1@0.5']:.3f} / {a['f1@0.75']:.3f}** "
            f"| {a['ap@0.5']:.3f} | {a['found']} / {a['cells']} | {report['best_step']} | {report['seconds']:.0f} s |")


def main(specs: list[str]) -> None:
    print("| run | recipe | other frames before: F1@0.5 / F1@0.75 | after | AP@0.5 after | found / annotated "
          "| step kept (0: the start) | time |")
    print("|---|---|---|---|---|---|---|---|")
    for spec in specs:
        label, path = spec.split("=", 1)
        print(row(label, json.loads(open(path).read())))


if __name__ == "__main__":
    main(sys.argv[1:])
