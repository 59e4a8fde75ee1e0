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
