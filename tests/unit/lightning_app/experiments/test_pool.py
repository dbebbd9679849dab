"""The local pool: waves of a DAG, one device set a slot, failures skip dependants only, and every study
on a machine shares its slots (fake fits: each `start` sleeps and records what it saw)."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from lightning_app.experiments import pool


def _dag(study: str = "") -> list[SimpleNamespace]:
    """Two attacks, each with defenses made from it, in the runner's chain order (ids prefixed by `study`)."""
    a1 = SimpleNamespace(id=f"{study}a1", deps={})
    a2 = SimpleNamespace(id=f"{study}a2", deps={})
    f1 = SimpleNamespace(id=f"{study}f1", deps={"attack": a1})
    c1 = SimpleNamespace(id=f"{study}c1", deps={"attack": a1})
    f2 = SimpleNamespace(id=f"{study}f2", deps={"attack": a2})
    return [a1, f1, c1, a2, f2]


def test_the_waves_of_a_dag_at_one_two_and_three_jobs():
    assert pool.waves(_dag(), 1) == [["a1"], ["f1"], ["c1"], ["a2"], ["f2"]]
    assert pool.waves(_dag(), 2) == [["a1", "a2"], ["f1", "c1"], ["f2"]]
    assert pool.waves(_dag(), 3) == [["a1", "a2"], ["f1", "c1", "f2"]]
    with pytest.raises(ValueError, match="--jobs"):
        pool.waves(_dag(), 0)


def test_each_slot_owns_its_own_devices():
    visible = ["0", "1", "2", "3"]
    assert [pool.devices_of(slot, 2, visible) for slot in (0, 1)] == ["0,1", "2,3"]
    assert pool.devices_of(0, 1, []) is None  # the CPU: no device to hand out
    with pytest.raises(ValueError, match="lower --jobs or --devices-per-job"):
        pool.devices_of(2, 2, visible)


class _Fits:
    """Fake fits that sleep, fail where told, and record the concurrency and devices they ran with."""

    def __init__(self, seconds: float = 0.15, fail: tuple[str, ...] = ()):
        self.seconds, self.fail = seconds, fail
        self.lock = threading.Lock()
        self.running: dict[str, str | None] = {}
        self.most = 0
        self.shared_device = False
        self.started: list[str] = []

    def start(self, run, env: dict) -> None:
        devices = env.get("CUDA_VISIBLE_DEVICES")
        with self.lock:
            taken = {d for v in self.running.values() if v for d in v.split(",")}
            self.shared_device |= bool(devices and taken & set(devices.split(",")))
            self.running[run.id] = devices
            self.most = max(self.most, len(self.running))
            self.started.append(run.id)
        time.sleep(self.seconds)
        with self.lock:
            del self.running[run.id]
        if run.id in self.fail:
            raise RuntimeError(f"{run.id} diverged")


def test_jobs_run_together_up_to_n_each_on_devices_of_its_own(tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "visible_gpus", lambda: ["0", "1", "2", "3"])
    fits, finished = _Fits(), []
    failed = pool.run_pool(_dag(), 2, fits.start, lambda run: finished.append(run.id), devices_per_job=2,
                           slots=tmp_path / "slots")
    assert failed == {} and sorted(finished) == ["a1", "a2", "c1", "f1", "f2"]
    assert fits.most == 2 and not fits.shared_device
    assert fits.started.index("f1") > fits.started.index("a1")  # after what it needs


def test_a_failed_run_skips_its_dependants_and_not_its_siblings(tmp_path):
    fits, finished = _Fits(fail=("a1",)), []
    failed = pool.run_pool(_dag(), 2, fits.start, lambda run: finished.append(run.id), slots=tmp_path / "slots")
    assert failed == {"a1": "a1 diverged", "f1": "skipped: a1 failed", "c1": "skipped: a1 failed"}
    assert sorted(finished) == ["a2", "f2"]


def test_two_studies_started_together_share_the_slots(tmp_path):
    fits = _Fits(seconds=0.2)
    studies = [threading.Thread(target=pool.run_pool, args=(_dag(study), 2, fits.start, lambda run: None),
                                kwargs={"slots": tmp_path / "slots"}) for study in ("one/", "two/")]
    for study in studies:
        study.start()
    for study in studies:
        study.join()
    assert len(fits.started) == 10 and fits.most == 2  # never more fits than slots, though each asked for 2


def test_a_study_whose_fit_ended_lets_a_waiting_study_take_the_slot(tmp_path):
    """One slot, two studies of five fits each: they take turns, instead of the first running all five
    while the second waits (a study asks again the moment its fit ends, before a waiter's next look)."""
    fits = _Fits(seconds=0.3)
    first = threading.Thread(target=pool.run_pool, args=(_dag("one/"), 1, fits.start, lambda run: None),
                             kwargs={"slots": tmp_path / "slots"})
    first.start()
    time.sleep(0.1)  # the first study holds the slot when the second asks
    second = threading.Thread(target=pool.run_pool, args=(_dag("two/"), 1, fits.start, lambda run: None),
                              kwargs={"slots": tmp_path / "slots"})
    second.start()
    first.join()
    second.join()
    order = [run_id.split("/")[0] for run_id in fits.started]
    assert len(order) == 10 and fits.most == 1
    assert order[:4] == ["one", "two", "one", "two"], order
    assert not list((tmp_path / "slots").glob("waiting.*"))  # no request is left marked as waiting


def test_a_finished_run_is_reused_without_waiting_for_a_slot(tmp_path):
    """Another study holds the only slot with a long fit: a chain whose runs are all finished (reused, no
    fit) goes through at once instead of waiting a turn for each of its links."""
    other, mine = _Fits(seconds=3.0), _Fits(seconds=0.0)
    holder = threading.Thread(target=pool.run_pool, args=(_dag("other/")[:1], 1, other.start, lambda run: None),
                              kwargs={"slots": tmp_path / "slots"})
    holder.start()
    time.sleep(0.3)  # the other study's fit holds the slot
    finished, began = {}, time.monotonic()
    failed = pool.run_pool(_dag(), 1, mine.start, lambda run: finished.setdefault(run.id, time.monotonic() - began),
                           slots=tmp_path / "slots", needs_slot=lambda run: run.id == "f2")
    holder.join()
    assert failed == {} and sorted(finished) == ["a1", "a2", "c1", "f1", "f2"]
    assert max(finished[r] for r in ("a1", "f1", "c1", "a2")) < 1.5, finished  # the reused runs did not wait
    assert finished["f2"] >= 2.0  # the one run to fit waited for the other study's fit to end
