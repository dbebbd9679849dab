"""What a module's `summary_extras` adds to a study's rows and tables, declared beside the code that writes it.

A LightningModule lists `summary_columns`: for each section of summary.json it writes (`"oracle": {...}`),
the prefix its values take as columns of a study's long-form rows (`oracle_victim_label`), the table
heading of each column, and which columns are counts (printed without decimals). The experiment
runner reads these declarations (`lightning_app/experiments/fields.py`), so adding a summary field is an
edit of the module that measures it, and the views name no module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class SummaryColumns:
    section: str
    """The key of summary.json the values are under."""
    prefix: str
    """Prepended to each value's key to make its column (`set_` + `m` → `set_m`)."""
    headings: dict[str, str] = field(default_factory=dict)
    """Column → table heading (columns without one are headed by their name)."""
    heading: str | None = None
    """The heading of a column without one in `headings`, from its key without the prefix (`ASR {key}`);
    None leaves such a column to the runner's generic heading (`oracle_auroc` → "oracle AUROC")."""
    counts: frozenset[str] | bool = frozenset()
    """Columns that count things, printed as whole numbers (True: every column of the section)."""
    nested: bool = False
    """The section maps a name to a mapping of values (`detection`: score → metric → value): one column
    `<prefix><name><separator><metric>` per value."""
    separator: str = "_"
    """Between a nested section's name and metric in its columns."""
    metric_headings: dict[str, str] = field(default_factory=dict)
    """Nested sections: metric → heading; the column `<name><separator><metric>` is headed "heading (name)"."""
    only: tuple[str, ...] = ()
    """Keep only keys starting with one of these (and strip `strip` from them); all keys when empty."""
    strip: str = ""
    """Removed from the front of each kept key."""
    bools_as_numbers: bool = False
    """True/False become 1.0/0.0, so that a table averages them over seeds (a rate)."""
    skip: frozenset[str] = frozenset()
    """Keys of the section that are not columns."""

    def heading_of(self, column: str) -> str | None:
        """The table heading of `column`, or None when the column is not this section's."""
        if column in self.headings:
            return self.headings[column]
        if self.heading is not None and self.prefix and column.startswith(self.prefix):
            return self.heading.format(key=column.removeprefix(self.prefix))
        if self.metric_headings and column.startswith(self.prefix):
            name, separator, metric = column.removeprefix(self.prefix).rpartition(self.separator)
            if separator and metric in self.metric_headings:
                return f"{self.metric_headings[metric]} ({name})"
        return None

    def counts_in(self, column: str) -> bool:
        """Whether `column` is one of this section's counts."""
        if self.counts is True:
            return bool(self.prefix) and column.startswith(self.prefix)
        return column in self.counts

    def columns(self, summary: dict) -> dict[str, Any]:
        """This section of `summary` as row columns ({} when the summary has none)."""
        values = summary.get(self.section) or {}
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key in self.skip or (self.only and not key.startswith(self.only)):
                continue
            key = key.removeprefix(self.strip)
            if self.nested:
                out.update({f"{self.prefix}{key}{self.separator}{name}": inner for name, inner in value.items()
                            if name not in self.skip})
            else:
                out[f"{self.prefix}{key}"] = float(value) if self.bools_as_numbers and isinstance(value, bool) else value
        return out
