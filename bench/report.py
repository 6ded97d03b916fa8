"""Tables, goals and sections of a benchmark run, rendered as aligned Markdown."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        widths = [len(h) for h in self.headers]
        for row in self.rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], len(cell))

        def line(cells: list[str]) -> str:
            padded = []
            for i, c in enumerate(cells):
                # Numbers right-aligned, words left-aligned.
                numeric = c[:1].isdigit() or (c[:1] in "-<>≥≤" and c[1:2].isdigit())
                padded.append(c.rjust(widths[i]) if numeric else c.ljust(widths[i]))
            return "| " + " | ".join(padded) + " |"

        out = [f"**{self.title}**", "", line(self.headers)]
        out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        out.extend(line(r) for r in self.rows)
        if self.notes:
            out.append("")
            out.extend(self.notes)
        return "\n".join(out)


@dataclass
class Goal:
    name: str
    target: str
    measured: str
    met: bool | None  # None: could not be measured
    gap: float | None = None  # how many times off the target (>1: missed by that factor)

    @property
    def verdict(self) -> str:
        if self.met is False and self.gap:
            return f"NOT met ({self.gap:.1f}x off)"
        return {True: "met", False: "NOT met", None: "not measured"}[self.met]


@dataclass
class Section:
    key: str  # the name used with --only
    title: str
    tables: list[Table] = field(default_factory=list)
    goals: list[Goal] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    appendix: list[str] = field(default_factory=list)  # Markdown lines after the tables
    skipped: str | None = None  # why the section did not run
    seconds: float = 0.0

    def to_markdown(self) -> str:
        out = [f"## {self.title}", ""]
        if self.skipped:
            out.append(f"Skipped: {self.skipped}.")
            return "\n".join(out)
        out.extend(f"{n}" for n in self.notes)
        if self.notes:
            out.append("")
        for t in self.tables:
            out.append(t.to_markdown())
            out.append("")
        out.extend(self.appendix)
        return "\n".join(out).rstrip()


def goals_table(goals: list[Goal]) -> Table:
    t = Table("Goals", ["goal", "target", "measured", "verdict"])
    for g in goals:
        t.rows.append([g.name, g.target, g.measured, g.verdict])
    return t


def fmt_s(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def fmt_mb(mb: float) -> str:
    return f"{mb:.0f} MB"


def fmt_ratio(x: float) -> str:
    return f"{x:.1f}x" if x < 100 else f"{x:.0f}x"
