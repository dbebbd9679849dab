"""The columns a study's rows get from the modules' summaries, as each module declares them
(`summary_columns` on the LightningModule that writes them, `modules/core/summary_columns.py`), gathered
over every module a config can name (`modules.__all__`).
"""

from __future__ import annotations

import functools

import modules
from modules.core.summary_columns import SummaryColumns


@functools.cache
def declared_columns() -> tuple[SummaryColumns, ...]:
    """Every module's declarations, each (section, prefix) once; two modules declaring one differently is a bug."""
    found: dict[tuple[str, str], SummaryColumns] = {}
    for name in modules.__all__:
        for columns in getattr(getattr(modules, name), "summary_columns", ()):
            key = (columns.section, columns.prefix)
            assert found.setdefault(key, columns) == columns, f"{name} declares {key} unlike another module"
    return tuple(found.values())


def summary_columns(summary: dict) -> dict:
    """A summary's sections as row columns."""
    row: dict = {}
    for columns in declared_columns():
        row.update(columns.columns(summary))
    return row


def heading(column: str) -> str | None:
    """The table heading a module declares for `column` (None when none does)."""
    return next((h for c in declared_columns() if (h := c.heading_of(column)) is not None), None)


def is_count(column: str) -> bool:
    return any(c.counts_in(column) for c in declared_columns())


def changes_weights(module_name: str | None) -> bool:
    """Whether the module a summary names hands on other weights than it was given (unknown names: True)."""
    return getattr(getattr(modules, module_name or "", None), "changes_weights", True)
