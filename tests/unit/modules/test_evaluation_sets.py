"""The evaluation callback over several sets (modules/core/evaluation.py): the first set logs as the
headline, the others under their names; each set gets its block, with its pass's seconds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from modules.core.evaluation import Evaluation


def _sets():
    trigger = object()
    classification = SimpleNamespace(kind="classification", name="shapes", classnames=["circle", "star"],
                                     trigger=trigger)
    sketch = SimpleNamespace(kind="classification", name="sketch", classnames=["circle", "star"], trigger=trigger)
    retrieval = SimpleNamespace(kind="retrieval", name="captions", trigger=trigger)
    return [classification, sketch, retrieval]


def test_a_list_of_sets_logs_the_first_as_the_headline_and_writes_one_block_per_set():
    sets = _sets()
    data = SimpleNamespace(eval_set=sets[0], eval_sets=sets, target="star")
    logged = {}
    trainer = SimpleNamespace(datamodule=data, sanity_checking=False)
    module = SimpleNamespace(device=torch.device("cpu"), log=lambda name, value, **_: logged.__setitem__(name, float(value)))
    callback = Evaluation()
    callback._start(trainer, module)
    eye = torch.eye(2)
    callback._batch({"classifier": eye, "label": torch.tensor([0, 1]), "clean": eye, "triggered": eye[[1, 1]]}, 0)
    callback._batch({"classifier": eye, "label": torch.tensor([0, 1]), "clean": eye[[1, 1]], "triggered": eye[[0, 1]]}, 1)
    callback._batch({"clean": eye, "position": torch.tensor([0, 1]), "text": eye, "text_position": torch.tensor([0, 1]),
                     "captions": ["a circle", "a star"], "triggered": eye[[1, 1]]}, 2)
    callback._end(trainer, module, "val")
    assert logged["val/ca_top1"] == 1.0 and logged["val/asr"] == 1.0  # the headline: unprefixed
    assert logged["val/sketch/ca_top1"] == 0.5 and logged["val/sketch/asr"] == 0.0
    assert logged["val/captions/i2t_r1"] == 1.0 and logged["val/captions/asr_hit1"] == 1.0
    assert list(callback.last) == ["shapes", "sketch", "captions"]
    assert callback.last["sketch"]["kind"] == "classification" and callback.last["captions"]["kind"] == "retrieval"
    assert callback.last["captions"]["t2i_r1"] == pytest.approx(1.0)
    assert all(block["eval_seconds"] >= 0 for block in callback.last.values())
