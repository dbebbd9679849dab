"""A run's config as values: every `--config` file and override of a `main.py fit` command merged into one
flat mapping of dotted keys, which is what a run's fingerprint compares (`lightning_app/pipelines.py`).

Files are only where values are written, so a config moved, renamed, or split into fragments that
resolve to the same values is the same config. The merge follows what jsonargparse does with the same
command: later files and overrides win key by key; a string naming a YAML file where a value belongs (a
fragment, `trigger: triggers/sig.yaml`) stands for that file's values; where a value names another
`class_path`, the `init_args` set before carry over only where the new class takes them. Defaults the code supplies are not values of the config: adding an option with a default keeps
every recorded run.

    python -m lightning_app.config_values configs/embedded/badnet.yaml --seed_everything 1   # print them
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent


def is_fragment(value: object, base: Path) -> bool:
    """Whether `value` names a YAML file beside `base`, as jsonargparse resolves a fragment in a config."""
    return isinstance(value, str) and value.endswith((".yaml", ".yml")) and (base / value).is_file()


def _inline_fragments(value: Any, base: Path) -> Any:
    if isinstance(value, dict):
        return {key: _inline_fragments(item, base) for key, item in value.items()}
    if isinstance(value, list):
        return [_inline_fragments(item, base) for item in value]
    if is_fragment(value, base):
        path = base / value
        return _inline_fragments(yaml.safe_load(path.read_text()), path.parent)
    return value


SCIENTIFIC = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
"""`5e-05`: YAML 1.1 (PyYAML) reads it as a string, the parser as the float its field is."""


def _leaves(prefix: str, value: Any) -> dict[str, Any]:
    """One dotted key per leaf; a mapping's None leaves stay (in a config, null sets a value)."""
    if isinstance(value, str) and SCIENTIFIC.match(value):
        return {prefix: float(value)}
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, item in value.items():
        out.update(_leaves(f"{prefix}.{key}" if prefix else str(key), item))
    return out


def _parameters(class_path: str) -> set[str] | None:
    """The `__init__` parameters of the class at `class_path` (None when it cannot be imported)."""
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
        return set(inspect.signature(cls.__init__).parameters) - {"self"}
    except (ImportError, AttributeError, ValueError, TypeError):
        return None


def _set(values: dict[str, Any], key: str, value: Any) -> None:
    """Merge `value` at `key` into `values` as jsonargparse does: leaf by leaf; where another `class_path` is
    set under a key, the `init_args` set before carry over only where the new class takes them (a class
    that cannot be imported keeps them all: the run would fail on it anyway)."""
    leaves = _leaves(key, value)
    for leaf, item in leaves.items():
        if leaf.endswith(".class_path") or leaf == "class_path":
            owner = leaf[: -len("class_path")]  # "data.init_args.trigger." (or "" at the top)
            if values.get(leaf) not in (None, item):
                takes = _parameters(item)
                for stale in [k for k in values if k.startswith(owner) and k not in leaves]:
                    argument = stale.removeprefix(owner + "init_args.").split(".")[0]
                    if takes is None or (stale.startswith(owner + "init_args.") and argument in takes):
                        continue
                    del values[stale]
    for leaf in leaves:
        # a whole value (a list of eval sets, null) replaces the mapping that was there, at any depth: the
        # keys under it go (`data.init_args.eval.directory` under a later `eval: [...]`)
        for stale in [k for k in values if k.startswith(leaf + ".")]:
            del values[stale]
    values.update(leaves)


def _pairs(overrides: list[str]) -> list[tuple[str, str]]:
    """`--key value` and `--key=value` arguments as (key, value)."""
    pairs, items = [], list(overrides)
    while items:
        flag = items.pop(0)
        if not flag.startswith("--"):
            raise ValueError(f"override {flag!r} is not a --key: overrides are `--key value` pairs")
        if "=" in flag:
            key, value = flag[2:].split("=", 1)
        elif items:
            key, value = flag[2:], items.pop(0)
        else:
            raise ValueError(f"override {flag} has no value")
        pairs.append((key, value))
    return pairs


def config_values(configs: str | list[str], overrides: list[str] = (), root: Path = REPO_ROOT) -> dict[str, Any]:
    """The merged values of `main.py fit --config C1 --config C2 ... OVERRIDES` (paths relative to `root`)."""
    values: dict[str, Any] = {}
    for config in [configs] if isinstance(configs, str) else configs:
        path = root / config
        if not path.is_file():
            raise ValueError(f"config {config}: no such file under {root}")
        _set(values, "", _inline_fragments(yaml.safe_load(path.read_text()) or {}, path.parent))
    for key, text in _pairs(list(overrides)):
        if key == "config":
            _set(values, "", _inline_fragments(yaml.safe_load((root / text).read_text()) or {}, (root / text).parent))
            continue
        value = _inline_fragments(text, root) if is_fragment(text, root) else yaml.safe_load(text)
        _set(values, key, value)
    values.pop("", None)
    return dict(sorted(values.items()))


def values_sha256(values: dict[str, Any]) -> str:
    """The sha256 of merged config values (`config_values`)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0)
    arguments = sys.argv[1:]
    files = []
    while arguments and not arguments[0].startswith("--"):
        files.append(arguments.pop(0))
    print(json.dumps(config_values(files, arguments, Path.cwd()), indent=1, default=str))
