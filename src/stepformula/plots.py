"""Every chart of the pipeline, drawn from metrics and histories (matplotlib, Agg backend).

Each PNG has a CSV beside it holding the same numbers, which is what `dvc plots` draws and diffs.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: stages run headless
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .io import _atomic  # noqa: E402


def save_figure(fig, path: str | Path) -> None:
    """PNG written atomically; the metadata date is dropped so reruns give the same bytes."""
    _atomic(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=110,
                                                metadata={"Software": None}))
    plt.close(fig)


def write_csv(path: str | Path, frame: pd.DataFrame) -> None:
    _atomic(Path(path), lambda tmp: frame.to_csv(tmp, index=False, float_format="%.6g"))


def short_experiment(name: str) -> str:
    """`20260217-202857-llama-2-70b-tp4-general` -> `llama-2-70b-tp4-general`."""
    parts = name.split("-", 2)
    return parts[2] if len(parts) == 3 and parts[0].isdigit() else name


def mape_bars(table: pd.DataFrame, path: str | Path, title: str) -> None:
    """Grouped bars: one group per experiment, one bar per method; `table` has columns
    target, method, experiment, mape_pct. One panel per target."""
    targets = list(dict.fromkeys(table["target"]))
    fig, axes = plt.subplots(1, len(targets), figsize=(6.5 * len(targets), 4.6), squeeze=False)
    for ax, target in zip(axes[0], targets):
        sub = table[table["target"] == target]
        wide = sub.pivot(index="experiment", columns="method", values="mape_pct")
        wide = wide[list(dict.fromkeys(sub["method"]))]
        wide.index = [short_experiment(e) for e in wide.index]
        wide.plot.bar(ax=ax, rot=12, width=0.85, logy=True)
        ax.set_title(f"{target}: test MAPE by experiment")
        ax.set_ylabel("MAPE (%, log scale)")
        ax.set_xlabel("")
        ax.legend(fontsize=7, ncol=2)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def pareto_plot(points: pd.DataFrame, front: pd.DataFrame, selected_ops: int | None,
                op_limit: int, path: str | Path, title: str) -> None:
    """Validation MAPE vs operations: every candidate (grey), the front (line), the winner (star)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.scatter(points["num_operations"], 100 * points["valid_mape"], s=10, color="0.6",
               label="archive elites")
    ax.step(front["num_operations"], 100 * front["valid_mape"], where="post", color="C0",
            marker="o", label="Pareto front")
    if selected_ops is not None:
        chosen = front[front["selected"]] if "selected" in front else front.iloc[0:0]
        if len(chosen):
            ax.scatter(chosen["num_operations"], 100 * chosen["valid_mape"], marker="*", s=220,
                       color="C3", zorder=5, label="selected")
    ax.axvline(op_limit - 0.5, color="C3", linestyle="--", linewidth=1, label=f"< {op_limit} ops")
    ax.set_yscale("log")
    ax.set_xlabel("operations")
    ax.set_ylabel("validation MAPE (%, log scale)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def predicted_vs_actual(experiments, actual, predicted, path: str | Path, title: str) -> None:
    """One log-log scatter per experiment, with the y = x line."""
    names = sorted(set(experiments))
    fig, axes = plt.subplots(1, len(names), figsize=(4.6 * len(names), 4.4), squeeze=False)
    for ax, name in zip(axes[0], names):
        rows = experiments == name
        a, p = actual[rows], predicted[rows]
        keep = (a > 0) & (p > 0)
        ax.scatter(a[keep], p[keep], s=4, alpha=0.35)
        low = min(a[keep].min(), p[keep].min()) if keep.any() else 1
        high = max(a[keep].max(), p[keep].max()) if keep.any() else 10
        ax.plot([low, high], [low, high], color="C3", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(short_experiment(name), fontsize=9)
        ax.set_xlabel("actual (µs)")
        ax.set_ylabel("predicted (µs)")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def evolution_curves(curves: pd.DataFrame, lam: float, path: str | Path, title: str) -> None:
    """Validation MAPE (solid) and training MAPE (dashed) of the best-so-far program against the
    iteration it was found; one colour per (run, engine). Steps: the best holds until replaced."""
    fig, ax = plt.subplots(figsize=(7.2, 4.6))
    for index, ((run, engine), line) in enumerate(curves.groupby(["run", "engine"], sort=True)):
        for column, style in (("valid_mape", "-"), ("train_mape", "--")):
            ax.step(line["iteration"], 100 * line[column].astype(float), where="post",
                    linestyle=style, color=f"C{index}",
                    label=f"run {run} ({engine}) {'validation' if column == 'valid_mape' else 'train'}")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("MAPE of the best program so far (%, log)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    save_figure(fig, path)
