"""IoU tables for the terminal: one row a class (hard classes marked), one column a result."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from m2skd.common.labels import CLASS_NAMES, class_ids


def iou_table(results: dict[str, dict], hard_classes: tuple[str, ...], title: str = "") -> Table:
    """Rows: classes (hard ones marked), then mIoU and hard mIoU; one column per result."""
    hard = {CLASS_NAMES[c] for c in class_ids(hard_classes)}
    table = Table(title=title or None)
    table.add_column("class")
    for name in results:
        table.add_column(name, justify="right")
    for c in CLASS_NAMES[1:]:
        label = f"[bold]{c}*[/]" if c in hard else c
        table.add_row(label, *(f"{100 * r['iou'][c]:.1f}" for r in results.values()))
    table.add_section()
    table.add_row("[bold]mIoU", *(f"[bold]{100 * r['miou']:.1f}" for r in results.values()))
    table.add_row("[bold]hard mIoU*", *(f"[bold]{100 * r['hard_miou']:.1f}" for r in results.values()))
    return table


def print_table(results: dict[str, dict], hard_classes: tuple[str, ...], title: str = "") -> None:
    Console().print(iou_table(results, hard_classes, title))
