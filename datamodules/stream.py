"""The training stream: img2dataset shards → samples → poison → transform → batches.

Built on webdataset's pipeline stages. What it adds:
- Shard order shuffled per (seed, epoch) from a shared epoch value (Lightning never calls
  `set_epoch` on an IterableDataset), then `split_by_node` and `split_by_worker`.
- Every worker yields exactly `batches_per_worker` full batches, so every rank sees the same number
  of batches and DDP cannot hang. A worker whose shards run short continues with its shards in the
  next epoch's order. With shards divisible by ranks × workers and of equal size, an epoch sees every
  sample once, less each worker's last partial batch (dropped).
- Corrupt samples (undecodable, missing or oversized image, missing or non-UTF-8 caption, unreadable tar
  member) are skipped,
  counted in counters shared by all workers, and logged; past `max_corrupt_fraction` the run stops.
  A shard that cannot be opened, breaks, or yields fewer samples than its img2dataset stats file
  records is a lost shard: the samples it was expected to hold (its stats file, else the average
  shard) less those read from it count as lost samples against the same fraction, so a quarter of the
  data unreadable stops the run instead of the epoch being filled by re-reading the other shards.
  The count is needed because Python's tarfile reads a header cut short, a shard cut on a member
  boundary and an empty tar as a normal end of the archive. Each shard is judged once per epoch of
  a worker (a worker that runs short and re-reads shards does not count them again), so a shard lost
  in each of 3 epochs counts 3, as its samples would have counted 3 times as good.
- Each batch carries the health counts of the samples read to make it (`batch["health"]`); the
  loader adds up those of the batches training consumed, so `data_health` is exact over resumes
  (a resumed run's skipped batches are produced again but never consumed).
- Exact mid-epoch resume: with `skip_batches = n` set when the DataLoader iterator is created, the
  pass yields exactly the batches after the first n of the epoch, in the same order. The DataLoader takes batch j from worker
  j mod W, so the workers' roles are rotated to start at worker `batches` mod W, and each worker
  skips its share (by producing and discarding it: augmentations are seeded by key and epoch).
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import random
from collections.abc import Iterator
from functools import partial
from itertools import islice

import webdataset as wds
from torch.utils.data import IterableDataset

from datamodules.shards import every_nth, passthrough, shard_order
from datamodules.stream_health import (
    _LOGGED_SKIPS,
    _MIN_SEEN_FOR_FRACTION,
    IMAGE_EXTENSIONS,
    CorruptDataError,
    StreamHealth,
    skipped_samples,
)
from datamodules.transforms import MAX_IMAGE_PIXELS, TrainSample, decode_image

log = logging.getLogger(__name__)


class PairStream(IterableDataset):
    """An IterableDataset of training batches with a known length (batches per rank)."""

    def __init__(
        self,
        urls: list[str],
        sample_builder: TrainSample,
        batch_size: int,
        batches_per_worker: int,
        num_workers: int,
        seed: int,
        shuffle_buffer: int,
        max_corrupt_fraction: float,
        shard_sizes: dict[str, int] | None = None,
        excluded: frozenset[str] = frozenset(),
        worker_start: str = "forkserver",
        average_size: int | None = None,
        max_image_pixels: int = MAX_IMAGE_PIXELS,
    ):
        """`shard_sizes`: samples in each shard by its img2dataset stats file, for the shards that have
        one (a shard that yields fewer is lost); a shard without one is expected to hold `average_size`
        (None: the average of the known sizes) if it breaks. `excluded`: keys dropped (and counted)
        before they are decoded, a data-level defense's choice (datamodules.exclusion). `worker_start`:
        how the DataLoader starts its workers (`multiprocessing_context`), which the shared counters
        must be made in."""
        super().__init__()
        self.urls = urls
        self.sample_builder = sample_builder
        self.batch_size = batch_size
        self.batches_per_worker = batches_per_worker
        self.num_workers = max(1, num_workers)
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.max_corrupt_fraction = max_corrupt_fraction
        self.health = StreamHealth(worker_start)
        self._epoch = mp.get_context(worker_start).Value("q", 0)
        self.skip_batches = 0
        """Batches of this epoch already consumed (rank-local); read when workers start, so a plain attribute."""
        self._failed_shards_in_a_row = 0
        self.shard_sizes = dict(shard_sizes or {})
        self.excluded = excluded
        self.average_size = average_size
        self.max_image_pixels = max_image_pixels
        self._read_from: dict[str, int] = {}
        """Samples read from each shard by this process (a worker's copy) in this pass."""
        self._opened: list[str] = []
        """Shards this pass has opened, in order; `_errors`: those that failed, with the error."""
        self._errors: dict[str, str] = {}
        self._judged: set[str] = set()
        """Shards of this epoch (of this worker) already judged whole or lost."""
        self._pending: dict[str, int] = {}
        """Health counts of this worker since its last batch."""

    def set_epoch(self, epoch: int) -> None:
        self._epoch.value = epoch

    @property
    def epoch(self) -> int:
        return self._epoch.value

    def __len__(self) -> int:
        return self.batches_per_worker * self.num_workers

    def _count(self, name: str, n: int = 1) -> None:
        self.health.add(name, n)
        self._pending[name] = self._pending.get(name, 0) + n

    def _check_fraction(self, where: str, detail: object) -> None:
        snap = self.health.snapshot()
        skipped = skipped_samples(snap)
        seen = skipped + snap["good"]
        if seen >= _MIN_SEEN_FOR_FRACTION and skipped / seen > self.max_corrupt_fraction:
            raise CorruptDataError(
                f"{skipped} of {seen} training samples were corrupt or lost ({snap}), more than "
                f"data.max_corrupt_fraction={self.max_corrupt_fraction}; last at {where}: {detail}"
            )

    def _skip(self, reason: str, where: str, detail: object) -> None:
        self._count(reason)
        if skipped_samples(self.health.snapshot()) <= _LOGGED_SKIPS:
            log.warning("skipping corrupt sample (%s) at %s: %s", reason, where, detail)
        self._check_fraction(where, detail)

    def _expected_size(self, url: str) -> int:
        if url in self.shard_sizes:
            return self.shard_sizes[url]
        if self.average_size is not None:
            return self.average_size
        sizes = list(self.shard_sizes.values())
        return round(sum(sizes) / len(sizes)) if sizes else 0

    def _failed_shard(self, exn: Exception) -> str | None:
        """The shard an exception of webdataset's tar reader is about (it names the url), if any."""
        named = exn.args[-1] if exn.args and isinstance(exn.args[-1], str) else ""
        if named in self.urls:
            return named
        text = str(exn)
        return next((url for url in self.urls if url in text), None)

    def _on_tar_error(self, exn: Exception) -> bool:
        if isinstance(exn, CorruptDataError):
            raise exn
        self._failed_shards_in_a_row += 1
        if self._failed_shards_in_a_row > len(self.urls):
            raise CorruptDataError(f"every shard failed to read; last error: {exn}") from exn
        url = self._failed_shard(exn)
        if url is None:
            self._skip("tar_error", "tar stream", repr(exn))
        else:
            self._errors.setdefault(url, repr(exn))  # a truncated shard can raise twice
        return True

    def _record_opened(self, shards: Iterator[dict]) -> Iterator[dict]:
        for shard in shards:
            self._opened.append(shard["url"])
            yield shard

    def _judge(self, url: str) -> None:
        """Count a shard the reader has moved past as lost if it failed or yielded fewer samples than
        its stats file records."""
        if url in self._judged:
            return
        self._judged.add(url)
        read = self._read_from.get(url, 0)
        known = self.shard_sizes.get(url)
        error = self._errors.get(url)
        if error is None and (known is None or read >= known):
            return
        expected = self._expected_size(url)
        lost = max(0, expected - read)
        self._count("lost_shards")
        self._count("lost_samples", lost)
        cause = error or f"the tar ends after {read} of the {known} samples its stats file records (cut or empty)"
        log.warning("lost shard %s (%d expected samples unread): %s", url, lost, cause)
        self._check_fraction(url, cause)

    def _judge_opened_before(self, url: str | None) -> None:
        """Judge the shards opened before `url` (all, for None): the reader has moved past them (the
        sample being assembled when a shard ended still comes out after the next shard is opened)."""
        for opened in self._opened[: self._opened.index(url)] if url in self._opened else list(self._opened):
            self._judge(opened)

    def _read(self, raws: Iterator[dict]) -> Iterator[dict]:
        current = None
        for raw in raws:
            url = raw.get("__url__")
            if url != current:  # the shards before this one are behind the reader: judged once, not per sample
                self._judge_opened_before(url)
                current = url
            self._read_from[url] = self._read_from.get(url, 0) + 1
            yield raw
        self._judge_opened_before(None)

    def _with_health(self, batch: dict) -> dict:
        batch["health"], self._pending = self._pending, {}
        return batch

    def _prepare(self, raw: dict) -> dict | None:
        key = raw["__key__"]
        if key in self.excluded:
            self._count("excluded")
            return None
        where = f"{raw.get('__url__')}:{key}"
        payload = next((raw[ext] for ext in IMAGE_EXTENSIONS if ext in raw), None)
        if payload is None:
            self._skip("bad_image", where, "no image member")
            return None
        try:
            image = decode_image(payload, self.max_image_pixels)
        except Exception as exn:  # PIL raises many types for broken files
            self._skip("bad_image", where, repr(exn))
            return None
        try:
            caption = raw.get("txt", b"").decode("utf-8").strip()
        except UnicodeDecodeError as exn:  # trained on as replacement characters it would be another caption
            self._skip("bad_caption", where, repr(exn))
            return None
        if not caption:
            self._skip("missing_caption", where, "no or empty .txt member")
            return None
        self._failed_shards_in_a_row = 0
        self._count("good")
        return self.sample_builder(key, image, caption)

    def every_pair_once(self) -> Iterator[dict]:
        """One pass over all shards in this process, in shard order, unshuffled, the last batch kept
        partial: for scoring every training pair (defenses), not for training."""
        self._read_from, self._opened, self._errors, self._judged = {}, [], {}, set()
        pipeline = wds.DataPipeline(
            partial(iter, [{"url": url} for url in self.urls]),
            self._record_opened,
            wds.tarfile_to_samples(handler=self._on_tar_error),
            self._read,
            wds.map(self._prepare, handler=wds.reraise_exception),
            wds.batched(self.batch_size, collation_fn=self.sample_builder.collate, partial=True),
            wds.map(self._with_health),
        )
        self.sample_builder.epoch = self.epoch
        return iter(pipeline)

    def _one_pass(self, epoch: int, worker: int) -> Iterator[dict]:
        """Worker `worker`'s share of one pass over the shards, in the order of `epoch`."""
        self._read_from, self._opened, self._errors = {}, [], {}
        rank, _, _, _ = wds.utils.pytorch_worker_info()
        shuffle_seed = hashlib.sha256(f"{self.seed}/{epoch}/{rank}/{worker}".encode()).hexdigest()
        pipeline = wds.DataPipeline(
            partial(iter, shard_order(self.urls, self.seed, epoch, shuffle=self.shuffle_buffer > 0)),
            wds.split_by_node,
            partial(every_nth, start=worker, step=self.num_workers),
            self._record_opened,
            wds.tarfile_to_samples(handler=self._on_tar_error),
            self._read,
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer, rng=random.Random(shuffle_seed))
            if self.shuffle_buffer > 0
            else passthrough,
            wds.map(self._prepare, handler=wds.reraise_exception),
            wds.batched(self.batch_size, collation_fn=self.sample_builder.collate, partial=False),
            wds.map(self._with_health),
        )
        return iter(pipeline)

    def _passes(self, worker: int) -> Iterator[dict]:
        epoch = self.epoch
        self.sample_builder.epoch = epoch
        self._judged = set()
        while True:
            produced = 0
            for batch in self._one_pass(epoch, worker):
                produced += 1
                yield batch
            if produced == 0:
                raise CorruptDataError(f"a full pass over {len(self.urls)} shards gave this worker no batch")
            epoch += 1  # a worker whose shards ran short continues into the next pass's order

    def __iter__(self) -> Iterator[dict]:
        _, _, loader_worker, loader_workers = wds.utils.pytorch_worker_info()
        assert loader_workers == self.num_workers, (loader_workers, self.num_workers)
        skip = self.skip_batches
        worker = (loader_worker + skip) % self.num_workers
        own_skip = len(range(worker, skip, self.num_workers))  # batches j < skip with j mod W == worker
        return islice(self._passes(worker), own_skip, self.batches_per_worker)
