"""What a run evaluates on: one or several named sets in clip_benchmark's webdataset layout.

    data:
      init_args:
        eval:                          # one set (as before), or a list of named sets
          - {name: imagenet1k, directory: /data/wds_imagenet1k}
          - {name: imagenet_sketch, directory: /data/wds_imagenet_sketch,
             classnames: /data/wds_imagenet1k/classnames.txt}
          - {name: mscoco, directory: /data/wds_mscoco_captions}   # dataset_type.txt says "retrieval"

The first set is the run's headline: its CA and ASR are `val/ca_top1` and `val/asr`, the figures every table
uses. The others log under `val/<name>/…`. A set is a zero-shot classification set (`classnames.txt`,
`zeroshot_classification_templates.txt`, `.cls` labels) or a retrieval set (`dataset_type.txt` reading
`retrieval`, each image with a `.txt` of captions, one per line), as clip_benchmark writes them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

from datamodules.shards import read_text_lines

KINDS = ("classification", "retrieval")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class EvalSetConfig:
    """One evaluation set in clip_benchmark's webdataset layout."""

    directory: str = "data/embedded/eval"
    """Directory with <split>/nshards.txt and <split>/N.tar (and classnames.txt and templates for classification)."""
    name: Optional[str] = None
    """The set's name in logs and summary.json (`val/<name>/ca_top1`); default: the directory's name."""
    kind: Literal["auto", "classification", "retrieval"] = "auto"
    """`auto` reads the set's dataset_type.txt (clip_benchmark: `retrieval`, else classification)."""
    split: str = "test"
    """Sub-directory of the split to evaluate."""
    classnames: Optional[str] = None
    """A classnames.txt to use instead of the set's own (ImageNet's variants share ImageNet's)."""
    templates: Optional[str] = None
    """A templates file ({c} for the class name) to use instead of the set's own."""
    batch_size: int = 256
    """Eval batch size per rank."""
    num_workers: int = 0
    """DataLoader workers for evaluation."""
    max_samples: Optional[int] = None
    """Evaluate only the first N samples (for quick checks)."""

    def __post_init__(self) -> None:
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"data.eval.max_samples must be ≥ 1 (or null for the whole set), got {self.max_samples}: "
                             "with no eval samples CA and ASR are not measured")
        if self.batch_size < 1 or self.num_workers < 0:
            raise ValueError(f"data.eval.batch_size must be ≥ 1 and data.eval.num_workers ≥ 0, got "
                             f"{self.batch_size} and {self.num_workers}")
        if self.name is not None and not _SAFE_NAME.match(self.name):
            raise ValueError(f"data.eval name {self.name!r}: use letters, digits, '_', '-' and '.' (it becomes a "
                             "metric name and a summary key)")

    @property
    def set_name(self) -> str:
        return self.name or Path(self.directory.rstrip("/")).name

    def resolved_kind(self) -> str:
        """classification or retrieval: as configured, or from the set's dataset_type.txt."""
        if self.kind != "auto":
            return self.kind
        marker = Path(self.directory) / "dataset_type.txt"
        if marker.exists() and read_text_lines(marker, "eval dataset type")[0].strip().lower() == "retrieval":
            return "retrieval"
        return "classification"

    def classnames_file(self) -> Path:
        return Path(self.classnames) if self.classnames else Path(self.directory) / "classnames.txt"

    def templates_file(self) -> Path:
        return Path(self.templates) if self.templates else Path(self.directory) / "zeroshot_classification_templates.txt"


def eval_set_list(eval: EvalSetConfig | list[EvalSetConfig]) -> list[EvalSetConfig]:
    """The configured sets as a list, checked: at least one, and names unique."""
    configs = list(eval) if isinstance(eval, (list, tuple)) else [eval]
    if not configs:
        raise ValueError("data.eval is an empty list: name at least one evaluation set")
    names = [config.set_name for config in configs]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"data.eval: the set name(s) {repeated} appear more than once; give each set a `name`")
    return configs
