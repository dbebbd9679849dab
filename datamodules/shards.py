"""Shard lists: expanding URL patterns, checking them, counting samples, and scanning keys.

URLs are anything webdataset opens: local paths, brace patterns (`data/{00000..00099}.tar`), several
patterns joined by `::`, and `pipe:` commands.
"""

from __future__ import annotations

import json
import logging
import random
import tarfile
from collections.abc import Iterator
from itertools import islice
from pathlib import Path
from typing import Optional, Union

import webdataset as wds

ShardSpec = Union[str, list[str]]

log = logging.getLogger(__name__)


def expand_shards(spec: ShardSpec) -> list[str]:
    urls = wds.shardlists.expand_urls(spec) if isinstance(spec, str) else list(spec)
    if not urls:
        raise ValueError(f"shard pattern {spec!r} expands to no shards")
    return urls


def _is_local(url: str) -> bool:
    return not url.startswith("pipe:") and "://" not in url


_ANNOUNCED_PIPES: set[tuple[str, ...]] = set()


def announce_pipes(urls: list[str], option: str) -> None:
    """Say, once per process, that `pipe:` shards are shell commands this run executes (webdataset runs
    each with `shell=True` when the shard is opened): trusted input, like a script, never a URL from
    someone else. A run's config.yaml holds them too, and rerunning it runs them again."""
    pipes = tuple(url for url in urls if url.startswith("pipe:"))
    if pipes and pipes not in _ANNOUNCED_PIPES:
        _ANNOUNCED_PIPES.add(pipes)
        log.warning("%s: %d shards are `pipe:` shell commands this run executes, e.g. %r", option, len(pipes),
                    pipes[0].removeprefix("pipe:"))


def check_shards_exist(urls: list[str], option: str) -> None:
    announce_pipes(urls, option)
    missing = [u for u in urls if _is_local(u) and not Path(u).exists()]
    if missing:
        raise ValueError(f"{option}: {len(missing)} of {len(urls)} shards do not exist, first: {missing[0]}")


def _stats_file(url: str) -> Optional[Path]:
    return Path(url).with_name(Path(url).stem + "_stats.json") if _is_local(url) else None


def shard_sizes(urls: list[str]) -> dict[str, int]:
    """Samples per shard from img2dataset's stats files, for the shards that have one."""
    sizes = {}
    for url in urls:
        stats = _stats_file(url)
        if stats is not None and stats.exists():
            data = json.loads(stats.read_text())
            sizes[url] = int(data.get("successes", data.get("count", 0)))
    return sizes


def count_samples(urls: list[str], option: str) -> int:
    """Sum the successes of img2dataset's `NNNNN_stats.json` files beside local shards."""
    sizes = shard_sizes(urls)
    missing = next((url for url in urls if url not in sizes), None)
    if missing is not None:
        raise ValueError(
            f"{option}: cannot count the samples of {missing} (no img2dataset stats file beside it); "
            "set data.num_samples to the number of pairs in the shards"
        )
    return sum(sizes.values())


def sample_key(member_name: str) -> tuple[str, str]:
    """webdataset's split of a tar member name into (key, extension): at the first dot of the basename."""
    directory, _, base = member_name.rpartition("/")
    stem, _, ext = base.partition(".")
    return (f"{directory}/{stem}" if directory else stem), ext


def scan_captions(urls: list[str], lost: Optional[list[dict]] = None) -> Iterator[tuple[str, str]]:
    """Yield (key, caption) for every sample with a `.txt` member, reading tars as streams. A shard
    that cannot be read is an error, or with `lost`, recorded there ({url, error}) and skipped."""
    for url in urls:
        stream = wds.gopen(url)
        try:
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for member in tar:
                    key, ext = sample_key(member.name)
                    if ext == "txt" and member.isfile():
                        handle = tar.extractfile(member)
                        yield key, handle.read().decode("utf-8", errors="replace") if handle else ""
        except (tarfile.TarError, OSError) as exn:
            if lost is None:
                raise ValueError(f"cannot read shard {url} while selecting poisoned pairs: {exn}") from exn
            log.warning("lost shard %s while selecting poisoned pairs (skipped): %s", url, exn)
            lost.append({"url": url, "error": repr(exn)})
        finally:
            stream.close()


def read_text_lines(path: Path, option: Optional[str] = None) -> list[str]:
    if not path.exists():
        raise ValueError(f"{option or 'file'}: {path} does not exist")
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def shard_order(urls: list[str], seed: int, epoch: int, shuffle: bool) -> list[dict]:
    """The shards of an epoch, in a per-(seed, epoch) order when `shuffle` (the same on every rank)."""
    order = list(urls)
    if shuffle:
        random.Random(f"{seed}/{epoch}").shuffle(order)
    return [{"url": url} for url in order]


def passthrough(src: Iterator) -> Iterator:
    return src


def every_nth(src: Iterator, start: int, step: int) -> Iterator:
    """Shards `start`, `start + step`, ...: webdataset's split_by_worker, with the worker's role given."""
    return islice(src, start, None, step)
