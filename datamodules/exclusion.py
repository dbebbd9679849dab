"""A data-level defense's output, applied: training pairs dropped before poisoning and batching.

"Filter then pretrain" (the pretraining-defense issue): a detector ranks the training pairs of a
poisoned model (UBT's one scoring pass writes every ranking to RUN/ubt/ranking.json: `dense`, `weak`,
`kdist`, `gmm`, ...), the top `fraction` by one `score` are dropped, and a model is pretrained on the
rest. The dropped keys are a pure function of the ranking file, score and fraction, so every rank and
every resume drops the same pairs; the poison manifest records them and how many were poisoned.

    python main.py fit --config configs/embedded/badnet.yaml \
        --data.init_args.exclude.ranking RUN/ubt/ranking.json --data.init_args.exclude.score dense
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ExcludeConfig:
    """Which training pairs a detector's ranking drops from training."""

    ranking: str
    """A ranking.json of UBT's discovery (`{"columns": ["key", score, ...], "ranked": [[key, ...], ...]}`)."""
    score: str = "dense"
    """The column that ranks the pairs (higher: more suspicious)."""
    fraction: float = 0.05
    """Share of the ranked pairs to drop, the most suspicious first (rounded up)."""

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction < 1.0:
            raise ValueError(f"data.exclude.fraction must be in (0, 1), got {self.fraction}")

    def keys(self) -> list[str]:
        """The dropped keys, most suspicious first (ties by key)."""
        path = Path(self.ranking)
        if not path.exists():
            raise ValueError(f"data.exclude.ranking {path} does not exist (a UBT discovery's ubt/ranking.json)")
        table = json.loads(path.read_text())
        columns = table.get("columns", [])
        if self.score not in columns[1:]:
            raise ValueError(f"data.exclude.score {self.score!r} is not a column of {path}; it has {columns[1:]}")
        at = columns.index(self.score)
        rows = [row for row in table["ranked"] if row[at] is not None and not math.isnan(row[at])]
        rows.sort(key=lambda row: (-row[at], row[0]))
        return [row[0] for row in rows[:math.ceil(self.fraction * len(rows))]]
