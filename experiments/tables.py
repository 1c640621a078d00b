"""The experiment's Markdown tables, from a summary (`stats.summarise`)."""

from __future__ import annotations

from m2skd.common.labels import CLASS_NAMES, class_ids

from .arms import ARMS, GAP, STUDENT_ARMS
from .stats import SMALL


def markdown(summary: dict) -> str:
    def f(d: dict) -> str:
        return f"{d['mean']:.1f} ± {d['std']:.1f}"

    arms = [k for k in ARMS if k in summary["arms"]]
    if not arms:  # an invocation that trained only tagged runs or ablations
        return ablation_markdown(summary)
    pairs = [p for p in summary["paired"] if p.split(" - ")[0] in ARMS]
    hard = [CLASS_NAMES[c] for c in class_ids(summary["hard_classes"])]
    head = "| seeds " + ",".join(map(str, summary["seeds"])) + " | " + " | ".join(arms) + " | " + " | ".join(
        f"{p} (paired)" for p in pairs) + " |"
    lines = [head, "|---" * (1 + len(arms) + len(pairs)) + "|"]
    for key in ["miou", "hard_miou", *hard]:
        label = {"miou": "**mIoU**", "hard_miou": "**hard-class mIoU** (the hard classes present)"}.get(key, key)
        row = [f(summary["arms"][k][key]) for k in arms]
        row += [f"{f(summary['paired'][p][key])} ({summary['paired'][p][key]['positive']}/"
                f"{len(summary['paired'][p][key]['values'])} > 0)" for p in pairs]
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    lines.append("| steps trained (mean) | " + " | ".join(
        f"{summary['arms'][k]['stopped_at']['mean']:.0f}" for k in arms) + " |" + " |" * len(pairs))
    fused = [k for k in arms if "fused" in summary["arms"][k]]
    if fused:
        def pair(k: str) -> str:
            if k not in fused:
                return ""
            f_ = summary["arms"][k]["fused"]
            return f"{f_['miou']['mean']:.1f} / {f_['hard_miou']['mean']:.1f}"
        lines.append("| fused input: mIoU / hard | " + " | ".join(pair(k) for k in arms) + " |" + " |" * len(pairs))
    return ("\n".join(lines) + "\n" + plateau_markdown(summary) + gate_markdown(summary["gate"])
            + transfer_markdown(summary) + recall_markdown(summary) + gap_markdown(summary)
            + verdict_markdown(summary) + ablation_markdown(summary))


def gate_markdown(g: dict) -> str:
    if not g["rows"]:
        return ""
    lines = [f"\n**Gate** (the teacher's lead on its fused input, hard-class IoU points over the hard classes "
             f"present in the report set: {', '.join(g['rows'][0]['present'])}; needs >= {g['min_lead']:.0f} in "
             f">= {g['share']:.0%} of the seeds): **{'passed' if g['passed'] else 'not passed'}**, "
             f"{g['ahead']}/{g['seeds']} seeds\n",
             "| seed | baseline mIoU | teacher mIoU (fused input) | baseline hard | teacher hard (fused input) | "
             "lead |", "|---" * 6 + "|"]
    lines += [f"| {r['seed']} | {r['baseline_miou']:.1f} | {r['teacher_fused_miou']:.1f} | {r['baseline_hard']:.1f} | "
              f"{r['teacher_fused_hard']:.1f} | {r['lead']:+.1f} |" for r in g["rows"]]
    return "\n".join(lines) + "\n"


def transfer_markdown(summary: dict) -> str:
    t = summary.get("transfer", {})
    arms = [a for a in STUDENT_ARMS if any(a in row for row in t.values())]
    if not t or not arms:
        return ""
    lines = ["", "| hard class (present in the report set) | teacher (fused input) − baseline | "
             + " | ".join(f"{a} − baseline (seeds moving with the teacher)" for a in arms) + " |",
             "|---" * (2 + len(arms)) + "|"]
    for c, row in t.items():
        cells = []
        for a in arms:
            if a not in row:
                cells.append("")
                continue
            toward = row[f"{a}_toward"]
            cells.append(f"{row[a]:+.1f}" + (f" ({toward}/{row[f'{a}_seeds']})" if toward is not None else ""))
        lines.append(f"| {c} | {row['teacher']:+.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def recall_markdown(summary: dict) -> str:
    rec = summary.get("small_recall", {})
    if not rec:
        return ""
    cols = [f"{c} {lo}-{hi - 1}" for c in SMALL["classes"] for lo, hi in SMALL["bins"]]
    lines = ["", "| recall of small instances (% of their points), mean ± std over seeds | " + " | ".join(cols) + " |",
             "|---" * (1 + len(cols)) + "|"]
    for arm, bins in rec.items():
        lines.append(f"| {arm} | " + " | ".join(f"{bins[c]['mean']:.1f} ± {bins[c]['std']:.1f}" if c in bins else ""
                                                  for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plateau_markdown(summary: dict) -> str:
    p = summary.get("plateau")
    if not p:
        return ""
    return (f"\nBaseline's val mIoU, mean of {p['seeds']} seeds: {p['last']:.1f} over the last {p['window']} steps of "
            f"the budget (to step {p['end']}), {p['before']:.1f} over the {p['window']} before: {p['gain']:+.1f} "
            "points.\n")


def verdict_markdown(summary: dict) -> str:
    verdicts = summary.get("verdict", {})
    if not verdicts:
        return ""

    def interval(ci: tuple[float, float] | None) -> str:
        return "" if ci is None else f" [{ci[0]:+.1f}, {ci[1]:+.1f}]"

    lines = ["", "| student arm − baseline | seeds ahead on hard classes | hard-class mIoU (95 % CI) | "
             "mIoU (95 % CI) | pooled share of the teacher's gap | target met |", "|---" * 6 + "|"]
    for arm, v in verdicts.items():
        lines.append(f"| {arm} | {v['hard_ahead']}/{v['seeds']} | {v['hard_diff']:+.1f}{interval(v['hard_ci95'])} | "
                     f"{v['miou_diff']:+.1f}{interval(v['miou_ci95'])} | {v['gap_share']:.2f} | "
                     f"{'yes' if v['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _row(xs: list[float], fmt: str) -> str:
    return ", ".join(format(x, fmt) for x in xs)


def gap_markdown(summary: dict) -> str:
    gaps = summary.get("gap_closed", {})
    if not gaps:
        return ""
    lines = ["", "| student arm | teacher | hard-class gain over the baseline, per seed | teacher's gap (fused input), "
             "per seed | share closed, per seed | pooled share |", "|---" * 6 + "|"]
    for arm, g in gaps.items():
        lines.append(f"| {arm} | {GAP[arm]} | {_row(g['gain'], '+.1f')} | {_row(g['gap'], '+.1f')} | "
                     f"{_row(g['share'], '.2f')} | {g['pooled_share']:.2f} |")
    return "\n".join(lines) + "\n"


def ablation_markdown(summary: dict) -> str:
    """One row per ablation or tagged run: its scores and its paired differences against
    the run it changes (M2SKD for M2SKD's ablations) and the baseline, over its seeds."""
    derived = summary.get("derived", {})
    if not derived:
        return ""

    def f(d: dict | None) -> str:
        return "" if d is None else f"{d['mean']:+.1f} ± {d['std']:.1f} ({d['positive']}/{len(d['values'])} > 0)"

    lines = ["", "| run (− its reference) | seeds | mIoU | hard-class mIoU | − reference, mIoU (paired) | "
             "− reference, hard (paired) | − baseline, mIoU (paired) | − baseline, hard (paired) | "
             "steps trained (mean) |", "|---" * 9 + "|"]
    for d, ref in derived.items():
        k, paired = summary["arms"][d], summary["paired"]
        # a reference run may be missing from this invocation's results (the tables from
        # `--rebuild` of the recorded folder have every run): its columns stay empty
        vs_r = paired.get(f"{d} - {ref['reference']}", {})
        vs_b = paired.get(f"{d} - {ref['baseline']}", {})
        notes = [f"− {r}" for r in ref.values() if r]
        if "fused" in k and ref["reference"] in summary["arms"]:
            base = summary["arms"][ref["reference"]]["fused"]
            notes.append(f"fused input {k['fused']['miou']['mean']:.1f} / {k['fused']['hard_miou']['mean']:.1f} "
                         f"hard, {ref['reference']}'s {base['miou']['mean']:.1f} / {base['hard_miou']['mean']:.1f}")
        name = f"{d} ({'; '.join(notes)})"
        lines.append(f"| {name} | {len(k['miou']['values'])} | {k['miou']['mean']:.1f} ± {k['miou']['std']:.1f} | "
                     f"{k['hard_miou']['mean']:.1f} ± {k['hard_miou']['std']:.1f} | {f(vs_r.get('miou'))} | "
                     f"{f(vs_r.get('hard_miou'))} | {f(vs_b.get('miou'))} | {f(vs_b.get('hard_miou'))} | "
                     f"{k['stopped_at']['mean']:.0f} |")
    return "\n".join(lines) + "\n"
