import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.embedded.writers import encode_image, write_img2dataset_shard
from datamodules.poison import PoisonConfig, Poisoner
from datamodules.shards import scan_captions, shard_sizes
from datamodules.stream import PairStream
from datamodules.stream_health import CorruptDataError
from datamodules.transforms import InputSpec, TrainSample


def _image(i):
    return Image.fromarray(np.full((8, 8, 3), i % 256, dtype=np.uint8))


def _spec():
    return InputSpec(image_size=8, mean=(0.5,) * 3, std=(0.5,) * 3,
                     tokenizer=lambda texts: torch.zeros((len(texts), 4), dtype=torch.long))


def _stream(urls, batches, batch_size=1, shuffle=0, max_fraction=0.5):
    builder = TrainSample(_spec(), Poisoner(None, [], PoisonConfig()))
    urls = [str(u) for u in urls]
    return PairStream(urls, builder, batch_size, batches, 0, 0, shuffle, max_fraction, shard_sizes(urls))


def _add(tar, name, payload):
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _keys(stream):
    return [k for batch in stream for k in batch["key"]]


def test_corrupt_image_missing_caption_and_truncated_member_are_skipped_and_counted(tmp_path):
    good = [(f"00000{i:04d}", _image(i)) for i in range(50)]
    shard_a = tmp_path / "00000.tar"
    with tarfile.open(shard_a, "w") as tar:
        for key, image in good:
            _add(tar, f"{key}.jpg", encode_image(image, "jpg"))
            _add(tar, f"{key}.txt", b"a caption")
        _add(tar, "000000100.jpg", b"this is not a jpeg")
        _add(tar, "000000100.txt", b"a caption")
        _add(tar, "000000101.jpg", encode_image(_image(1), "jpg"))  # no caption
    write_img2dataset_shard(tmp_path, 1, [(_image(i), f"caption {i}") for i in range(20)])
    shard_b = tmp_path / "00001.tar"
    data = shard_b.read_bytes()
    with tarfile.open(shard_b) as tar:
        last_jpg = [m for m in tar.getmembers() if m.name.endswith(".jpg")][-1]
    shard_b.write_bytes(data[: last_jpg.offset_data + 10])  # cut inside the last image

    expected = {k for k, _ in good} | {f"00001{i:04d}" for i in range(19)}
    stream = _stream([shard_a, shard_b], batches=len(expected))
    keys = _keys(stream)
    assert sorted(keys) == sorted(expected)
    health = stream.health.snapshot()
    assert health["good"] == len(expected)
    assert health["bad_image"] == 1
    assert health["missing_caption"] == 1
    assert (health["lost_shards"], health["lost_samples"]) == (1, 1)  # shard b ends one sample early


def test_a_non_tar_shard_is_a_lost_shard_counted_by_its_expected_samples(tmp_path, caplog):
    urls = [write_img2dataset_shard(tmp_path, s, [(_image(i), f"c {i}") for i in range(100)]) for s in range(4)]
    Path(urls[2]).write_bytes(b"not a tar" * 100)  # its stats file still says 100 samples
    stream = _stream(urls, batches=300, max_fraction=0.5)
    keys = _keys(stream)
    assert len(keys) == 300 and not any(k.startswith("00002") for k in keys)
    health = stream.health.snapshot()
    assert (health["lost_shards"], health["lost_samples"]) == (1, 100)
    assert any(str(urls[2]) in message for message in caplog.messages)
    # a quarter of the data lost is far past 1%: the run stops, naming the shard
    with pytest.raises(CorruptDataError, match="00002.tar"):
        _keys(_stream(urls, batches=300, max_fraction=0.01))


def test_poison_selection_skips_a_lost_shard_and_records_it(tmp_path):
    urls = [str(write_img2dataset_shard(tmp_path, s, [(_image(i), f"c {i}") for i in range(10)])) for s in range(2)]
    Path(urls[0]).write_bytes(b"broken")
    with pytest.raises(ValueError, match="00000.tar"):
        list(scan_captions(urls))
    lost = []
    assert len(list(scan_captions(urls, lost))) == 10
    assert [entry["url"] for entry in lost] == [urls[0]]


def test_run_stops_past_the_corrupt_fraction(tmp_path):
    with tarfile.open(tmp_path / "00000.tar", "w") as tar:
        for i in range(300):
            payload = encode_image(_image(i), "jpg") if i % 4 else b"broken"
            _add(tar, f"{i:09d}.jpg", payload)
            _add(tar, f"{i:09d}.txt", b"a caption")
    with pytest.raises(CorruptDataError, match="max_corrupt_fraction"):
        _keys(_stream([tmp_path / "00000.tar"], batches=250, max_fraction=0.1))


def test_shuffle_is_deterministic_per_epoch_and_differs_across_epochs(tmp_path):
    urls = [write_img2dataset_shard(tmp_path, s, [(_image(i), f"c {i}") for i in range(30)]) for s in range(4)]
    stream = _stream(urls, batches=120, shuffle=50)
    first = _keys(stream)
    assert _keys(stream) == first
    assert sorted(first) == sorted({f"{s:05d}{i:04d}" for s in range(4) for i in range(30)})
    stream.set_epoch(1)
    second = _keys(stream)
    assert second != first and sorted(second) == sorted(first)


def test_every_rank_gets_the_same_number_of_batches_from_uneven_shards(tmp_path, monkeypatch):
    sizes = [40, 10, 25, 5]
    urls = [write_img2dataset_shard(tmp_path, s, [(_image(i), "c") for i in range(n)]) for s, n in enumerate(sizes)]
    counts = []
    for rank in range(2):
        monkeypatch.setitem(os.environ, "RANK", str(rank))
        monkeypatch.setitem(os.environ, "WORLD_SIZE", "2")
        counts.append(sum(1 for _ in _stream(urls, batches=sum(sizes) // (2 * 4), batch_size=4)))
    assert counts == [10, 10]


def _loader_keys(stream, workers):
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return [list(batch["key"]) for batch in loader]


@pytest.mark.parametrize("shard_size, missing_per_worker", [(25, 0), (23, 1)])
def test_two_ranks_two_workers_see_every_sample_once(tmp_path, monkeypatch, shard_size, missing_per_worker):
    urls = [write_img2dataset_shard(tmp_path, s, [(_image(i), "c") for i in range(shard_size)])
            for s in range(8)]
    batches_per_worker = 8 * shard_size // (2 * 2 * 5)
    seen, per_rank = [], []
    for rank in range(2):
        monkeypatch.setitem(os.environ, "RANK", str(rank))
        monkeypatch.setitem(os.environ, "WORLD_SIZE", "2")
        stream = PairStream([str(u) for u in urls], TrainSample(_spec(), Poisoner(None, [], PoisonConfig())),
                            5, batches_per_worker, 2, 0, 10, 0.5)
        batches = _loader_keys(stream, workers=2)
        per_rank.append(len(batches))
        seen += [key for batch in batches for key in batch]
    assert per_rank[0] == per_rank[1] == 2 * batches_per_worker
    assert len(seen) == len(set(seen)), "a sample was seen twice"
    # what is missing is each worker's last partial batch, nothing else
    assert 8 * shard_size - len(seen) == 4 * missing_per_worker


@pytest.mark.parametrize("skip", [0, 3, 4, 7])
def test_a_resumed_pass_yields_exactly_the_batches_after_the_skipped_ones(tmp_path, skip):
    urls = [write_img2dataset_shard(tmp_path, s, [(_image(i), "c") for i in range(20)])
            for s in range(4)]

    def stream():
        builder = TrainSample(_spec(), Poisoner(None, [], PoisonConfig()))
        return PairStream([str(u) for u in urls], builder, 4, 10, 2, 0, 8, 0.5)

    full = _loader_keys(stream(), workers=2)
    resumed = stream()
    resumed.skip_batches = skip
    assert _loader_keys(resumed, workers=2) == full[skip:]


def test_every_pair_once_covers_all_pairs_including_a_partial_batch(tmp_path):
    urls = [write_img2dataset_shard(tmp_path, s, [(_image(i), "c") for i in range(7)]) for s in range(3)]
    stream = _stream(urls, batches=1, batch_size=4, shuffle=5)
    batches = list(stream.every_pair_once())
    keys = [k for b in batches for k in b["key"]]
    assert len(keys) == len(set(keys)) == 21
    assert [len(b["key"]) for b in batches] == [4, 4, 4, 4, 4, 1]


@pytest.mark.parametrize("cut", ["inside_a_header", "on_a_member_boundary", "mid_member", "empty_tar"])
def test_a_shard_cut_anywhere_or_empty_is_lost_by_the_count_its_stats_file_records(tmp_path, cut):
    """Python's tarfile ends a shard cut in a header or on a member boundary, and an empty tar, without an
    error: only the stats file's count tells. A shard is counted once, though the worker re-reads it."""
    urls = [write_img2dataset_shard(tmp_path, s, [(_image(i), f"c {i}") for i in range(100)]) for s in range(4)]
    shard = Path(urls[1])
    data = shard.read_bytes()
    with tarfile.open(shard) as tar:
        members = tar.getmembers()
    first_of_sample_40 = next(m for m in members if m.name.startswith("000010040."))
    read = 40
    if cut == "inside_a_header":
        shard.write_bytes(data[: first_of_sample_40.offset + 100])
    elif cut == "on_a_member_boundary":
        shard.write_bytes(data[: first_of_sample_40.offset])
    elif cut == "mid_member":
        shard.write_bytes(data[: first_of_sample_40.offset_data + 10])
    else:
        shard.unlink()
        with tarfile.open(shard, "w"):
            pass
        read = 0
    batches = (300 + read) + (100 + read) + 1  # a pass, then shards 0 and 1 again and a sample of shard 2
    stream = _stream(urls, batches=batches)
    assert len(_keys(stream)) == batches
    health = stream.health.snapshot()
    assert (health["lost_shards"], health["lost_samples"]) == (1, 100 - read)


def test_without_stats_files_a_short_shard_is_not_lost(tmp_path):
    """Shards of unequal size and no stats file (data.num_samples given): nothing to compare with."""
    urls = [write_img2dataset_shard(tmp_path, s, [(_image(i), f"c {i}") for i in range(50 + 25 * s)]) for s in range(3)]
    for url in urls:
        Path(url).with_name(Path(url).stem + "_stats.json").unlink()
    stream = _stream(urls, batches=150)
    assert len(_keys(stream)) == 150 and stream.health.snapshot()["lost_shards"] == 0


def test_pipe_shards_are_announced_as_shell_commands_once(tmp_path, caplog):
    from datamodules.shards import check_shards_exist

    urls = [f"pipe:cat {tmp_path}/{i:05d}.tar" for i in range(3)]
    check_shards_exist(urls, "data.train_shards")
    check_shards_exist(urls, "data.train_shards")
    announced = [m for m in caplog.messages if "shell commands" in m]
    assert len(announced) == 1 and f"cat {tmp_path}/00000.tar" in announced[0] and "3 shards" in announced[0]


def test_a_non_utf8_caption_and_an_image_over_the_pixel_limit_are_skipped_and_counted(tmp_path):
    shard = tmp_path / "00000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(10):
            _add(tar, f"{i:09d}.png", encode_image(_image(i), "png"))
            _add(tar, f"{i:09d}.txt", b"caf\xe9 latin-1" if i == 3 else b"a caption")
        big = io.BytesIO()
        Image.new("RGB", (300, 200)).save(big, "PNG")  # 60,000 pixels: small to store, over a 50,000 limit
        _add(tar, "000000010.png", big.getvalue())
        _add(tar, "000000010.txt", b"a caption")
    builder = TrainSample(_spec(), Poisoner(None, [], PoisonConfig()))
    stream = PairStream([str(shard)], builder, 1, 9, 0, 0, 0, 0.5, max_image_pixels=50_000)
    keys = _keys(stream)
    assert "000000003" not in keys and "000000010" not in keys and len(keys) == 9
    health = stream.health.snapshot()
    assert (health["bad_caption"], health["bad_image"], health["good"]) == (1, 1, 9)
