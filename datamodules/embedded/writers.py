"""Writers for the two on-disk layouts the toolkit reads.

- img2dataset (training pairs): `NNNNN.tar` with `KEY.jpg`, `KEY.txt`, `KEY.json`, keys of 9 digits
  whose first 5 are the shard id, and `NNNNN_stats.json` beside each tar.
- clip_benchmark webdataset (zero-shot eval): `test/nshards.txt`, `test/N.tar` with `KEY.png` +
  `KEY.cls`, `classnames.txt`, `zeroshot_classification_templates.txt` (templates use `{c}`); for
  retrieval, `KEY.png` + `KEY.txt` (the image's captions, one per line) and `dataset_type.txt` reading
  `retrieval`.

Tars are written with fixed metadata (mtime 0, no owner) so the same content gives the same bytes.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from PIL import Image


def _add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mtime = 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def encode_image(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "jpg":
        # 4:4:4 chroma: PIL's default 4:2:0 halves colour resolution, which at 32 px blurs every
        # coloured edge and makes the JPEG training images a different domain from the PNG eval set.
        image.save(buf, format="JPEG", quality=95, subsampling=0)
    else:
        image.save(buf, format=fmt.upper())
    return buf.getvalue()


def img2dataset_key(shard: int, index: int) -> str:
    if not 0 <= index < 10_000:
        raise ValueError(f"img2dataset keys hold 4 digits per shard; index {index} does not fit")
    return f"{shard:05d}{index:04d}"


def write_img2dataset_shard(out_dir: Path, shard: int, pairs: Sequence[tuple[Image.Image, str]]) -> Path:
    """Write one training shard and its stats file; returns the tar path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{shard:05d}.tar"
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for index, (image, caption) in enumerate(pairs):
            key = img2dataset_key(shard, index)
            meta = {
                "url": f"embedded://{key}",
                "caption": caption,
                "key": key,
                "status": "success",
                "error_message": None,
                "width": image.width,
                "height": image.height,
                "original_width": image.width,
                "original_height": image.height,
            }
            _add_member(tar, f"{key}.jpg", encode_image(image, "jpg"))
            _add_member(tar, f"{key}.txt", caption.encode("utf-8"))
            _add_member(tar, f"{key}.json", json.dumps(meta, sort_keys=True).encode("utf-8"))
    stats = {"count": len(pairs), "successes": len(pairs), "failed_to_download": 0, "failed_to_resize": 0}
    (out_dir / f"{shard:05d}_stats.json").write_text(json.dumps(stats, indent=1))
    return path


def _write_split(split_dir: Path, samples: Iterable[tuple[Image.Image, str, bytes]], shard_size: int,
                 image_format: str) -> None:
    """`split_dir/N.tar` of `shard_size` samples (image + one companion member each) and `nshards.txt`."""
    split_dir.mkdir(parents=True, exist_ok=True)
    shard, tar = -1, None
    for index, (image, companion, payload) in enumerate(samples):
        if index % shard_size == 0:
            if tar is not None:
                tar.close()
            shard += 1
            tar = tarfile.open(split_dir / f"{shard}.tar", "w", format=tarfile.USTAR_FORMAT)
        key = f"s{index:07d}"
        _add_member(tar, f"{key}.{image_format}", encode_image(image, image_format))
        _add_member(tar, f"{key}.{companion}", payload)
    if tar is not None:
        tar.close()
    (split_dir / "nshards.txt").write_text(f"{shard + 1}\n")


def write_clip_benchmark(
    out_dir: Path,
    samples: Iterable[tuple[Image.Image, int]],
    classnames: Sequence[str],
    templates: Sequence[str],
    shard_size: int = 1000,
    image_format: str = "png",
    split: str = "test",
) -> None:
    """Write a zero-shot classification set in clip_benchmark's webdataset layout."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (out_dir / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    (out_dir / "dataset_type.txt").write_text("zeroshot_classification\n")
    _write_split(out_dir / split, ((image, "cls", str(label).encode("utf-8")) for image, label in samples),
                 shard_size, image_format)


def write_clip_benchmark_retrieval(
    out_dir: Path,
    samples: Iterable[tuple[Image.Image, Sequence[str]]],
    shard_size: int = 1000,
    image_format: str = "png",
    split: str = "test",
) -> None:
    """Write an image-text retrieval set in clip_benchmark's webdataset layout (as it writes MSCOCO)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "dataset_type.txt").write_text("retrieval\n")
    _write_split(out_dir / split, ((image, "txt", "\n".join(captions).encode("utf-8")) for image, captions in samples),
                 shard_size, image_format)
