"""PNG figures for the demo and the README (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from m2skd.common.labels import CLASS_NAMES, class_ids, train_colors_rgb

from .arms import ARMS, arm_of

VIEW_RANGE = 40.0  # metres around the sensor shown in bird's-eye views


def _bev(ax, xyz: np.ndarray, colors, size: float = 0.3, title: str = "") -> None:
    ax.scatter(xyz[:, 0], xyz[:, 1], c=colors, s=size, linewidths=0)
    ax.set_xlim(-VIEW_RANGE, VIEW_RANGE)
    ax.set_ylim(-VIEW_RANGE, VIEW_RANGE)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)


def single_vs_fused(points: np.ndarray, labels: np.ndarray, n_original: int, hard_classes: tuple[str, ...],
                    path: Path) -> None:
    """Bird's-eye view of one scan alone and with its fused neighbours' hard-class instances."""
    hard = np.isin(labels, class_ids(hard_classes))
    grey = np.array([[0.75, 0.75, 0.75]])
    fig, axes = plt.subplots(1, 2, figsize=(12, 6), dpi=110)
    own = slice(0, n_original)
    for ax, fused in zip(axes, (False, True), strict=True):
        _bev(ax, points[own][~hard[own]], grey, 0.2)
        ax.scatter(points[own][hard[own], 0], points[own][hard[own], 1], c="tab:blue", s=2, linewidths=0,
                   label=f"hard-class points of the scan ({int(hard[own].sum()):,})")
        if fused:
            extra = points[n_original:]
            ax.scatter(extra[:, 0], extra[:, 1], c="tab:red", s=2, linewidths=0,
                       label=f"fused from neighbour scans ({len(extra):,})")
        ax.legend(loc="lower left", fontsize=8, markerscale=4)
        ax.set_title("teacher input: fused" if fused else "student input: single scan")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def predictions(points: np.ndarray, panels: dict[str, np.ndarray], path: Path) -> None:
    """Side-by-side BEV of one scan coloured by ground truth and each model's prediction."""
    colors = train_colors_rgb() / 255.0
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 6.3), dpi=110)
    for ax, (name, lab) in zip(np.atleast_1d(axes), panels.items(), strict=True):
        _bev(ax, points, colors[lab], 0.4, name)
    present = sorted(set(np.concatenate(list(panels.values())).tolist()) - {0})
    handles = [plt.Line2D([], [], marker="o", ls="", color=colors[c], label=CLASS_NAMES[c]) for c in present]
    fig.legend(handles=handles, loc="lower center", ncol=min(10, len(handles)), fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path)
    plt.close(fig)


def training_curves(runs: dict[str, list[dict]], path: Path, smooth: int = 20) -> None:
    """One panel per loss term, one line per run (moving average over `smooth` steps)."""
    terms = [t for t in ("seg", "feat", "logit", "aff", "total") if any(t in r[0] for r in runs.values() if r)]
    fig, axes = plt.subplots(1, len(terms), figsize=(4 * len(terms), 3.4), dpi=110)
    for ax, term in zip(np.atleast_1d(axes), terms, strict=True):
        for name, rows in runs.items():
            vals = np.array([r[term] for r in rows if term in r])
            if len(vals) == 0:
                continue
            k = max(1, min(smooth, len(vals)))
            avg = np.convolve(vals, np.ones(k) / k, mode="valid")
            ax.plot(np.arange(len(avg)) + k, avg, label=name)
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curves(results: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    colours = dict(zip(ARMS, ("tab:grey", "tab:green", "tab:orange", "tab:blue", "tab:red", "tab:purple"),
                       strict=True))
    for r in results:
        if r["val_curve"] and arm_of(r) in colours:  # the ablations have their own table, no curves
            steps, vals = zip(*r["val_curve"], strict=True)
            ax.plot(steps, [100 * v for v in vals], color=colours[arm_of(r)], alpha=0.8,
                    label=arm_of(r) if r["seed"] == min(x["seed"] for x in results) else None)
    ax.set_xlabel("step")
    ax.set_ylabel("val mIoU (%)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
