"""The real user's architectures at 224 px (random init, CPU) through every stage for a step or two:
poisoned pretraining with a 16-px BadNet patch, resume from a step checkpoint, export and reload through
open_clip alone, CleanCLIP (FT's path plus augmented views), ABD's crafting and ABD, and UBT's two stages in
one fit (image tokens from RN50's attention-pool grid and ViT-B-32's patch tokens). Nothing here measures
learning: it catches the shape, resolution and loading bugs that only 224-px models show. Each
architecture's test is a file of its own (tests/integration/test_real_architecture_*.py), so that the two
workers of README's test command (`--dist loadfile`) run them at once.
"""


from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from helpers.repo import REPO

from datamodules.embedded.benchmark import EmbeddedBenchmark
from datamodules.poison import load_trigger
from lightning_app.export import export_run
from modules.core.model_loading import ModelConfig, build_model

BATCH = 2
PATCH = 16  # BadNet's 16x16 patch of the CC3M recipes, in pixels of the 224-px input


def make_bench224(tmp_path_factory) -> EmbeddedBenchmark:
    """A tiny embedded benchmark at 224 px: 24 pretraining and 24 fine-tuning pairs, one eval image a class."""
    bench = EmbeddedBenchmark(root=str(tmp_path_factory.mktemp("bench224") / "embedded224"), pretrain_shards=1,
                              finetune_shards=1, samples_per_shard=24, eval_per_class=1, image_size=224,
                              retrieval_images=4, sketch_per_class=1, probe_per_class=1)
    bench.prepare()
    return bench


def _fit(config: str, run_dir: Path, bench: EmbeddedBenchmark, arch: str, *extra: str) -> dict:
    """One fit in a process of its own: a 224-px model's fit costs gigabytes that a test process would keep
    (the ViT-B-32 test grew pytest by 7.5 GB in-process; benchmarks/suite_memory.py)."""
    fit = subprocess.run([sys.executable, str(REPO / "main.py"),
        "fit", "--config", config,
        "--torch_threads", "2",
        "--trainer.default_root_dir", str(run_dir),
        "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "1",
        "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_progress_bar", "false",
        "--model.init_args.model.name", arch,
        "--data.init_args.embedded", "null",
        "--data.init_args.eval.directory", bench.eval_dir,
        "--data.init_args.batch_size", str(BATCH),
        "--data.init_args.num_workers", "0",
        *extra,
    ], cwd=REPO, capture_output=True, text=True)
    assert fit.returncode == 0, f"{config} on {arch} failed:\n{fit.stderr[-3000:]}"
    return json.loads((run_dir / "summary.json").read_text())


NO_EVAL = ("--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false")


def _defense(config: str, run_dir: Path, bench: EmbeddedBenchmark, arch: str, poisoned: Path, *extra: str) -> dict:
    """One step of a defense from the poisoned run; its CA/ASR pass is the pretraining's code path, run there,
    and its checkpoint (1.2 GB for RN50 with AdamW's state) is never read: both skipped for the CI's minutes."""
    return _fit(config, run_dir, bench, arch, *NO_EVAL,
                "--model.init_args.model.pretrained", str(poisoned / "checkpoints" / "last.ckpt"),
                "--data.init_args.train_shards", bench.finetune_urls,
                "--data.init_args.trigger_dir", str(poisoned / "trigger"),
                "--model.init_args.optimizer.warmup_steps", "1",
                "--data.init_args.text_synonyms", "none",  # needs no WordNet: test_text_augment tests the synonyms
                *extra)


OPEN_CLIP_ONLY = textwrap.dedent("""
    import json, sys
    import open_clip, torch
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + sys.argv[1])
    model.eval()
    assert not any(m.split(".")[0] in ("modules", "datamodules", "lightning_app") for m in sys.modules)
    torch.manual_seed(0)
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        emb = model.encode_image(x)
    print(json.dumps({"image_size": preprocess.transforms[0].size, "emb": emb.tolist()}))
""")


def every_stage_at_224_px(arch: str, bench224: EmbeddedBenchmark, tmp_path: Path) -> None:
    """The whole check for one architecture (its assertions fail the calling test)."""
    poisoned = tmp_path / "badnet"
    pretrain = ("--data.init_args.train_shards", bench224.pretrain_urls,
                "--data.init_args.trigger.init_args.size", str(PATCH),
                "--data.init_args.poison.rate", "0.5",
                "--data.init_args.poison.captions", "templates",  # 24 pairs need not name the target
                "--model.init_args.optimizer.warmup_steps", "1",
                "--checkpoint_every_n_steps", "1")
    first = _fit("configs/embedded/badnet.yaml", poisoned, bench224, arch, *pretrain)
    assert first["steps"] == 1 and 0.0 <= first["asr"] <= 1.0 and first["poison_count"] > 0
    trigger = load_trigger(poisoned / "trigger")
    patched = trigger.apply(torch.full((3, 224, 224), 0.5), key="k")  # no 8-bit pattern value is 0.5
    assert (patched != 0.5).any(dim=0).sum().item() == PATCH * PATCH  # the patch is 16 px at 224, not rescaled

    # resume from the step checkpoint into a second epoch
    resumed = _fit("configs/embedded/badnet.yaml", poisoned, bench224, arch, *pretrain,
                   "--trainer.max_epochs", "2", "--trainer.limit_val_batches", "0", "--ckpt_path", "last")
    assert resumed["steps"] == 2 and resumed["epochs"] == 2

    # export, then reload through open_clip alone: the same image embeddings as our own model
    export_dir = export_run(poisoned, tmp_path / "export")
    out = subprocess.run([sys.executable, "-c", OPEN_CLIP_ONLY, str(export_dir)], capture_output=True, text=True,
                         cwd=tmp_path, check=True)
    theirs = json.loads(out.stdout.strip().splitlines()[-1])
    assert theirs["image_size"] in (224, (224, 224))
    ours, spec = build_model(ModelConfig(arch, pretrained=str(poisoned / "checkpoints" / "last.ckpt")))
    assert spec.image_size == 224
    ours.eval()
    torch.manual_seed(0)
    with torch.no_grad():
        emb = ours.encode_image(torch.rand(2, 3, 224, 224))
    torch.testing.assert_close(torch.tensor(theirs["emb"]), emb, rtol=1e-4, atol=1e-5)

    # FT and CleanCLIP are both the pretraining module started from a checkpoint, CleanCLIP with augmented
    # views too: its fit covers FT's path at 224 px
    summary = _defense("configs/embedded/cleanclip.yaml", tmp_path / "cleanclip", bench224, arch, poisoned)
    assert summary["steps"] == 1

    craft = tmp_path / "abd_craft"
    _defense("configs/embedded/abd_craft.yaml", craft, bench224, arch, poisoned,
             "--model.init_args.patch_size", str(PATCH))
    summary = _defense("configs/embedded/abd.yaml", tmp_path / "abd", bench224, arch, poisoned,
                       "--model.init_args.patch_dir", str(craft / "adversarial"))
    assert summary["steps"] == 1

    ubt = tmp_path / "ubt"
    summary = _defense("configs/embedded/ubt_one_fit.yaml", ubt, bench224, arch, poisoned,
                       "--model.init_args.discover.train_shards", bench224.pretrain_urls,
                       "--model.init_args.discover.poison.rate", "0.5",
                       "--model.init_args.discover.poison.captions", "templates",
                       "--model.init_args.m", "2", "--model.init_args.forget_batch_size", "2")
    assert summary["steps"] == 1
    detection = json.loads((ubt / "ubt" / "detection.json").read_text())
    assert detection["weak"]["num_pairs"] == 24, detection
    assert summary["unlearned_pairs"] == 2
    shutil.rmtree(poisoned / "checkpoints")  # 3.6-5.4 GB for these models with AdamW's state
