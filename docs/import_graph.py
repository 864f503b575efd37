"""Draw the package import graph into docs/figures/import-graph.png and print the count of
function-local imports of the project's own modules outside the command-line dispatch.

    python docs/import_graph.py [--out docs/figures/import-graph.png]

The graph and the count come from tests/test_layering.py's AST walk (every import statement, those
inside functions included; nothing is imported), so the figure shows what the tests check. Packages
are laid out in layers, each above every package it imports: all arrows point down.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from test_layering import (cycles, hidden_imports, package_graph, project_files, project_imports,  # noqa: E402
                           where)

WHAT = {"core": "the science: pure functions", "daemon": "threads, queues, journal",
        "net": "ZeroMQ helpers", "training": "datasets, training, checkpoints",
        "export": "torch -> checked ONNX", "scale": "hub, reprocess", "dashboard": "web page",
        "simulator": "simulated plates", "results": "journal readers", "wellwatch": "CLI, client, bench"}


def layers(nodes: set[str], edges) -> dict[str, int]:
    """Each package's layer: one above the highest package it imports (0: imports none)."""
    deps = {n: {b for a, b in edges if a == n} for n in nodes}
    level: dict[str, int] = {}

    def of(n: str) -> int:
        if n not in level:
            level[n] = 1 + max((of(d) for d in deps[n]), default=-1)
        return level[n]

    for n in nodes:
        of(n)
    return level


def positions(level: dict[str, int], edges) -> dict[str, tuple[float, float]]:
    """x within a layer ordered by the mean x of the packages it imports (fewer crossings)."""
    pos: dict[str, tuple[float, float]] = {}
    for y in range(max(level.values()) + 1):
        row = [n for n in level if level[n] == y]

        def below(n: str) -> float:
            xs = [pos[b][0] for a, b in edges if a == n and b in pos]
            return sum(xs) / len(xs) if xs else 0.0

        row.sort(key=lambda n: (below(n), n))
        for i, n in enumerate(row):
            pos[n] = ((i - (len(row) - 1) / 2) * 2.6, y * 1.6)
    return pos


def draw_matrix(ax, edges, level: dict[str, int]) -> None:
    """Importer rows, imported columns, both ordered from the top layer down: with no cycle every
    count lies above the diagonal, so the matrix shows at a glance what the graph's arrows say."""
    order = sorted(level, key=lambda n: (-level[n], n))
    counts = [[edges.get((a, b), 0) for b in order] for a in order]
    ax.imshow([[min(c, 1) * (0.35 + 0.65 * min(c, 60) / 60) for c in row] for row in counts],
              cmap="Greens", vmin=0, vmax=1)
    for i, row in enumerate(counts):
        for j, c in enumerate(row):
            if c:
                ax.text(j, i, str(c), ha="center", va="center", fontsize=8)
    ax.plot([-0.5, len(order) - 0.5], [-0.5, len(order) - 0.5], color="0.6", lw=0.8, ls="--")
    ax.set_xticks(range(len(order)), order, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.set_xlabel("imported package", fontsize=8)
    ax.set_ylabel("importing package", fontsize=8)
    ax.set_title("import statements (none below the diagonal: no cycle)", fontsize=9)


def draw(edges, out: Path) -> None:
    nodes = {n for edge in edges for n in edge}
    level = layers(nodes, edges)
    pos = positions(level, edges)
    fig, (ax, mx) = plt.subplots(1, 2, figsize=(16, 1.7 * (max(level.values()) + 1) + 0.6),
                                 gridspec_kw={"width_ratios": [2.2, 1]})
    draw_matrix(mx, edges, level)
    xs = [x for x, _ in pos.values()]
    h = 0.62
    # the bottom package, alone in its layer, spans the figure so the arrows into it land apart
    width = {n: (max(xs) - min(xs) + 2.0 if level[n] == 0 and sum(v == 0 for v in level.values()) == 1 else 1.8)
             for n in pos}

    def spread(ends: dict, node: str, others: list[str]) -> None:
        """Where each arrow leaves or enters `node`: apart, in the order of the packages at the other end."""
        others = sorted(others, key=lambda o: (pos[o][0], level[o]))
        for i, o in enumerate(others):
            ends[node, o] = pos[node][0] + 0.8 * width[node] * ((i + 0.5) / len(others) - 0.5)

    leave, land = {}, {}
    for n in pos:
        spread(leave, n, [b for a, b in edges if a == n])
        spread(land, n, [a for a, b in edges if b == n])
    for (a, b), count in sorted(edges.items()):
        (xa, ya), (xb, yb) = (leave[a, b], pos[a][1] - h / 2), (land[b, a], pos[b][1] + h / 2)
        skips = level[a] - level[b] > 1  # passes a layer: lighter, as it passes behind
        ax.annotate("", xy=(xb, yb), xytext=(xa, ya), zorder=1,
                    arrowprops={"arrowstyle": "-|>", "color": "0.6" if skips else "0.35",
                                "lw": 0.6 + 0.25 * count ** 0.5, "shrinkA": 1, "shrinkB": 1})
        t = 1 - 0.3 * (1.6 - h) / (ya - yb)  # the count just above the arrow's head
        ax.text(xa + (xb - xa) * t, ya + (yb - ya) * t, str(count), fontsize=7, ha="center", va="center",
                zorder=5, bbox={"boxstyle": "round,pad=0.12", "fc": "white", "ec": "none"})
    for n, (x, y) in pos.items():
        w = width[n]
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.04", zorder=3,
                                    fc="#dbe8f6" if n != "core" else "#d8f0d8", ec="0.3"))
        ax.text(x, y + 0.1, n, ha="center", va="center", fontsize=10, weight="bold", zorder=4)
        ax.text(x, y - 0.15, WHAT.get(n, ""), ha="center", va="center", fontsize=7, color="0.25", zorder=4)
    ax.set_xlim(min(xs) - 1.4, max(xs) + 1.4)
    ax.set_ylim(-0.6, max(y for _, y in pos.values()) + 0.6)
    ax.set_axis_off()
    ax.set_title("Package imports (arrow: importer -> imported; label: import statements;\n"
                 "a lighter arrow skips a layer and passes behind it)", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures" / "import-graph.png"))
    args = parser.parse_args(argv)
    imports = project_imports()
    edges = package_graph(imports)
    found = cycles(edges)
    if found:
        print(f"cycles: {found} (the layered drawing needs none)", file=sys.stderr)
        return 1
    draw(edges, Path(args.out))
    hidden = hidden_imports(imports)
    print(f"{len(project_files())} modules, {len(imports)} imports; package edges: "
          + ", ".join(f"{a}->{b} {n}" for (a, b), n in sorted(edges.items())))
    print(f"function-local imports of the project's own modules outside the command-line dispatch: {len(hidden)}")
    for imp in hidden:
        print(f"  {where(imp)}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
