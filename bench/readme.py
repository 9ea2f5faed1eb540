"""The Performance table of docs/performance.md: rendered from results.json, written
between `<!-- bench:start -->` and `<!-- bench:end -->` (the text around the markers is
the page's own and is never touched)."""

from __future__ import annotations

import math
from pathlib import Path

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"


def replace_block(text: str, block: str) -> str | None:
    """`text` with everything between the markers replaced by `block`; None when
    the markers are missing or out of order."""
    start = text.find(START)
    end = text.find(END, start + len(START)) if start >= 0 else -1
    if start < 0 or end < 0:
        return None
    return text[: start + len(START)] + "\n" + block.strip("\n") + "\n" + text[end:]


def update_doc(path: Path, block: str) -> bool:
    """Rewrite the block in the Markdown page at `path`; a one-line warning (and no
    write) when its markers are missing."""
    text = Path(path).read_text()
    updated = replace_block(text, block)
    if updated is None:
        print(f"warning: {path} has no '{START}' ... '{END}' markers; left unchanged")
        return False
    if updated != text:
        Path(path).write_text(updated)
    return True


def format_value(value: float, unit: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    number = f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    if unit in ("x", "%"):
        return number + unit
    return f"{number} {unit}".strip()


def format_target(figure: dict) -> str:
    if figure.get("target") is None:
        return ""
    return f"{'≥' if figure['higher_is_better'] else '≤'} {format_value(figure['target'], figure['unit'])}"


def format_met(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "**no**")


def render(results: dict) -> str:
    """The Markdown block: one line on the machine and run, the table, the notes."""
    machine = results["machine"]
    commit = machine["git_commit"][:12] + ("+dirty" if machine["git_commit"].endswith("+dirty") else "")
    lines = [
        f"Measured on {machine['cpu_model']} ({machine['cores']} cores), torch {machine['torch']} "
        f"({machine['torch_threads']} threads), Ray {machine['ray']}, commit `{commit}`, "
        f"{machine['date'][:10]}; the benchmarks took {sum(e['seconds'] for e in results['benchmarks'].values()) / 60:.1f} min.",
        "",
        "| benchmark | figure | value | target | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    notes = []
    for bench_name, entry in results["benchmarks"].items():
        for figure in entry["figures"]:
            lines.append(f"| {bench_name} | `{figure['name']}` | {format_value(figure['value'], figure['unit'])} | "
                         f"{format_target(figure)} | {format_met(figure['met'])} |")
            if figure.get("notes"):
                notes.append(f"- `{figure['name']}`: {figure['notes']}")
    return "\n".join(lines + ([""] + notes if notes else []))
