"""What the training stream counts: good samples, each reason a sample was skipped, lost shards and
samples, excluded pairs; per worker, carried in each batch, and restored on resume.
"""

from __future__ import annotations

import multiprocessing as mp

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
SKIP_REASONS = ("bad_image", "bad_caption", "missing_caption", "tar_error")
COUNTERS = ("good", *SKIP_REASONS, "lost_shards", "lost_samples", "excluded")
SKIPPED_SAMPLES = ("bad_image", "bad_caption", "missing_caption", "tar_error", "lost_samples")
_MIN_SEEN_FOR_FRACTION = 200
_LOGGED_SKIPS = 10


class StreamHealth:
    """Counts of good and skipped samples and of lost shards, shared by the DataLoader's worker processes."""

    def __init__(self, worker_start: str = "forkserver") -> None:
        # made in the context the workers start in: a lock from another one cannot cross into them
        self._counts = mp.get_context(worker_start).Array("q", len(COUNTERS))

    def add(self, name: str, n: int = 1) -> None:
        with self._counts.get_lock():
            self._counts[COUNTERS.index(name)] += n

    def restore(self, counts: dict[str, int]) -> None:
        with self._counts.get_lock():
            for index, name in enumerate(COUNTERS):
                self._counts[index] = counts.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        with self._counts.get_lock():
            values = list(self._counts)
        return dict(zip(COUNTERS, values))


def skipped_samples(counts: dict[str, int]) -> int:
    return sum(counts.get(name, 0) for name in SKIPPED_SAMPLES)


class CorruptDataError(RuntimeError):
    pass
