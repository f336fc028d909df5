"""``python -m cluster collect``: every member's final metrics as a table and a CSV, the best member by a
metric, and the loss curves of all members in one PNG (``results.csv`` and ``loss_curves.png`` in the
sweep directory)."""

import csv
import json
import math
from pathlib import Path

from cluster.rundir import RunDir
from cluster.sweep.manifest import Manifest
from cluster.sweep.status import read_curve, varying_overrides

COLUMNS = ("member", "overrides", "steps", "final_loss", "val_loss", "samples_per_s", "param_digest", "run_dir")


def write_report(manifest: Manifest, *, metric: str, mode: str) -> str:
    """Write results.csv and loss_curves.png; return the table and the best member as text."""
    labels = varying_overrides(manifest.members)
    rows, missing = [], []
    for member in manifest.members:
        summary_path = RunDir(Path(member.run_dir)).summary
        if not summary_path.is_file():
            missing.append(member.index)
            continue
        summary = json.loads(summary_path.read_text())
        rows.append({"member": member.index, "overrides": labels[member.index], **summary})
    sweep_dir = Path(manifest.sweep_dir)
    extra = sorted({key for row in rows for key in row} - set(COLUMNS))
    with open(sweep_dir / "results.csv", "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=[*COLUMNS, *extra], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    _plot(manifest, labels, sweep_dir / "loss_curves.png")

    validated = any("val_loss" in row for row in rows)  # a column only for sweeps that evaluate
    lines = [f"{'member':>6}  {'final_loss':>10}  " + (f"{'val_loss':>10}  " if validated else "")
             + f"{'steps':>6}  {'samples/s':>10}  overrides"]
    for row in rows:
        val_loss = f"{row['val_loss']:>10.4f}  " if "val_loss" in row else f"{'-':>10}  " if validated else ""
        lines.append(f"{row['member']:>6}  {row['final_loss']:>10.4f}  {val_loss}{row['steps']:>6}  "
                     f"{row['samples_per_s']:>10,.0f}  {row['overrides']}")
    ranked = [row for row in rows if isinstance(row.get(metric), (int, float)) and math.isfinite(row[metric])]
    if ranked:
        best = (min if mode == "min" else max)(ranked, key=lambda row: row[metric])
        lines.append(f"best by {metric} ({mode}): member {best['member']} ({best['overrides']}), "
                     f"{metric} = {best[metric]:.6g}")
    elif rows:
        lines.append(f"no member has a finite {metric!r} in its summary.json; pick another --metric")
    if missing:
        lines.append(f"no summary yet for member(s) {', '.join(map(str, missing))} (not finished)")
    lines.append(f"wrote {sweep_dir / 'results.csv'} and {sweep_dir / 'loss_curves.png'}")
    return "\n".join(lines)


def _plot(manifest: Manifest, labels: dict[int, str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only: login nodes have no display
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(9, 5.5))
    for position, member in enumerate(manifest.members):
        steps, losses = read_curve(Path(member.run_dir))
        if steps:  # the colour cycle has 10 colours: the next 10 members get dashes, then dots
            axes.plot(steps, losses, label=f"{member.index}: {labels[member.index]}"[:60], linewidth=1.2,
                      linestyle=("-", "--", ":")[position // 10 % 3])
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("training loss")
    axes.set_yscale("log")
    axes.set_title(f"{Path(manifest.sweep_dir).name}: {len(manifest.members)} member(s)")
    axes.grid(True, alpha=0.3)
    if len(manifest.members) <= 20:
        axes.legend(fontsize=7, loc="upper right")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)
