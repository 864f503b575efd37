"""Bar chart of few-frame adaptation scores from `wellwatch cellpose train ... --score` reports.

    python benchmarks/cellpose_few_frame_plot.py OUT.png "LABEL=REPORT.json:before" "LABEL=REPORT.json:after" ...  (a / in LABEL breaks the line)

Each REPORT.json is the JSON line `cellpose train` prints, or the report.json `wellwatch finetune` writes;
`before` / `after` picks which scores.
"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
out, specs = sys.argv[1], sys.argv[2:]
labels, f50, f75 = [], [], []
for spec in specs:
    label, rest = spec.split("=", 1)
    path, key = rest.rsplit(":", 1)
    text = open(path).read().strip()
    scores = (json.loads(text) if text.startswith("{") else json.loads(text.splitlines()[-1]))[key]
    labels.append(f"{label.replace('/', chr(10))}\n{scores['found']} of {scores['cells']} cells")
    f50.append(scores["f1@0.5"]); f75.append(scores["f1@0.75"])
x = np.arange(len(labels))
fig, ax = plt.subplots(figsize=(1.9 * len(labels) + 1, 3.6))
ax.bar(x - 0.18, f50, 0.36, label="F1@0.5"); ax.bar(x + 0.18, f75, 0.36, label="F1@0.75")
ax.axhline(0.85, color="C0", ls="--", lw=0.8); ax.axhline(0.5, color="C1", ls="--", lw=0.8)
for i, (a, b) in enumerate(zip(f50, f75)):
    ax.text(i - 0.18, a + 0.01, f"{a:.2f}", ha="center", fontsize=8); ax.text(i + 0.18, b + 0.01, f"{b:.2f}", ha="center", fontsize=8)
ax.set_xticks(x, labels, fontsize=8); ax.set_ylim(0, 1); ax.set_ylabel("on frames not trained on")
ax.legend(loc="upper left", fontsize=8); fig.tight_layout(); fig.savefig(out, dpi=110)
print("wrote", out)
