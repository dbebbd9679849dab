"""UBT end to end on a small caption-set BadNet case: stage 1 ranks the planted poisoned pairs above
the clean ones, and stage 2 unlearns at most m of them and evaluates before and after."""

from __future__ import annotations

import json

import pytest
from conftest import train_small

from lightning_app.cli import BackdoorCLI

RATE = 0.1
M = 60


def test_ubt_ranks_planted_poisons_first_and_unlearns_at_most_m(learning_benchmark, tmp_path):
    poisoned = tmp_path / "poisoned"
    caption_set = ["--data.init_args.poison.target", "triangle", "--data.init_args.poison.captions", "dataset",
                   "--data.init_args.trigger.init_args.location", "random"]
    train_small(learning_benchmark, poisoned, RATE, *caption_set)
    small_data = ["--data.init_args.embedded", "null", "--data.init_args.eval.directory", learning_benchmark.eval_dir,
                  "--data.init_args.batch_size", "64", "--trainer.enable_progress_bar", "false",
                  "--model.init_args.model.pretrained", str(poisoned / "checkpoints" / "last.ckpt"),
                  "--data.init_args.trigger_dir", str(poisoned / "trigger")]

    def detect(run, *extra):
        BackdoorCLI(args=["fit", "--config", "configs/embedded/ubt_detect.yaml", "--trainer.default_root_dir", str(run),
                          *small_data, "--data.init_args.train_shards", learning_benchmark.pretrain_urls,
                          "--data.init_args.poison.rate", str(RATE), *caption_set[:4],
                          "--model.init_args.top_m", str(M), "--model.init_args.report_k", f"[{M}]", *extra])
        return json.loads((run / "ubt" / "detection.json").read_text()), json.loads((run / "ubt" / "suspicious.json").read_text())

    detection, suspicious = detect(tmp_path / "detect")  # the shipped config: one scoring pass
    print({score: round(d["auroc"], 3) for score, d in detection.items()})
    assert set(detection) == {"before", "weak", "cluster", "dense", "kdist", "slof", "dao", "gmm"}
    assert abs(detection["weak"]["num_poisoned"] - RATE * 3000) < 30  # the rate is met per key hash, not exactly
    assert detection["weak"]["auroc"] >= 0.75  # measured 0.82 (a clean-model ranking is at 0.5)
    assert detection["weak"][f"precision@{M}"] >= 2 * RATE
    assert len(suspicious["keys"]) == M

    # UBT's overfitting scores every ranking; its `weak` ranking is the same pass over the same model
    overfitted, overfitted_suspicious = detect(tmp_path / "detect_overfit", "--model.init_args.overfit", "true")
    assert set(overfitted) == {"before", "after", "rise", "weak", "cluster"}
    assert overfitted["weak"] == detection["weak"] and overfitted_suspicious["keys"] == suspicious["keys"]
    assert overfitted["after"] != overfitted["before"]  # the overfitting moved the model

    # `cluster` picks its m from the seed of weakest pairs, and more precisely than `weak` does
    seed = 300
    by_cluster, cluster_suspicious = detect(tmp_path / "detect_cluster", "--model.init_args.score", "cluster",
                                            "--model.init_args.cluster_seed", str(seed))
    ranked = json.loads((tmp_path / "detect" / "ubt" / "ranking.json").read_text())["ranked"]
    assert set(cluster_suspicious["keys"]) <= {row[0] for row in ranked[:seed]} and len(cluster_suspicious["keys"]) == M
    poisoned_keys = set(json.loads((tmp_path / "detect_cluster" / "poison" / "manifest.json").read_text())["keys"])
    precision = {name: sum(k in poisoned_keys for k in picked["keys"]) / M
                 for name, picked in (("weak", suspicious), ("cluster", cluster_suspicious))}
    print("cluster AUROC", round(by_cluster["cluster"]["auroc"], 3), "precision of the unlearning set", precision)
    assert precision["weak"] == pytest.approx(detection["weak"][f"precision@{M}"])
    assert precision["cluster"] > precision["weak"]
    detect = tmp_path / "detect"

    unlearn = tmp_path / "unlearn"
    BackdoorCLI(args=["fit", "--config", "configs/embedded/ubt_unlearn.yaml", "--trainer.default_root_dir", str(unlearn),
                      *small_data, "--data.init_args.train_shards", learning_benchmark.finetune_urls,
                      "--model.init_args.suspicious_dir", str(detect / "ubt"), "--model.init_args.m", "40"])
    summary = json.loads((unlearn / "summary.json").read_text())
    assert summary["unlearned_pairs"] == 40
    assert summary["before"]["asr"] is not None and 0.0 <= summary["asr"] <= 1.0
    assert summary["steps"] > 0

    # both stages in one fit: the same pairs found, the same unlearning
    one_fit = tmp_path / "one_fit"
    BackdoorCLI(args=["fit", "--config", "configs/embedded/ubt_one_fit.yaml", "--trainer.default_root_dir", str(one_fit),
                      *small_data, "--data.init_args.train_shards", learning_benchmark.finetune_urls,
                      "--model.init_args.discover.train_shards", learning_benchmark.pretrain_urls,
                      "--model.init_args.discover.poison.rate", str(RATE), "--model.init_args.discover.report_k", f"[{M}]",
                      "--model.init_args.m", "40"])
    one_fit_summary = json.loads((one_fit / "summary.json").read_text())
    assert json.loads((one_fit / "ubt" / "suspicious.json").read_text())["keys"] == suspicious["keys"][:40]
    assert one_fit_summary["detection"]["weak"]["auroc"] == pytest.approx(detection["weak"]["auroc"])
    assert one_fit_summary["unlearned_pairs"] == 40
    print("two runs", summary["ca_top1"], summary["asr"], "one fit", one_fit_summary["ca_top1"], one_fit_summary["asr"])
    assert one_fit_summary["asr"] == pytest.approx(summary["asr"], abs=0.02)
    assert one_fit_summary["ca_top1"] == pytest.approx(summary["ca_top1"], abs=0.02)


    # the label-free set: `dense` ranking, m from the mixture (at most 200), read in a second pass
    dense = tmp_path / "dense"
    BackdoorCLI(args=["fit", "--config", "configs/embedded/ubt_dense.yaml", "--trainer.default_root_dir", str(dense),
                      *small_data, "--data.init_args.train_shards", learning_benchmark.finetune_urls,
                      "--model.init_args.discover.train_shards", learning_benchmark.pretrain_urls,
                      "--model.init_args.discover.poison.rate", str(RATE), "--model.init_args.discover.report_k", f"[{M}]"])
    dense_summary = json.loads((dense / "summary.json").read_text())
    chosen = dense_summary["suspicious_set"]
    print("dense", chosen, dense_summary["detection"]["dense"]["auroc"], dense_summary["ca_top1"], dense_summary["asr"])
    # Measured (2026-12-02): on this small, briefly trained model the triggered images do not collapse
    # (dense AUROC 0.29, the mixture's D 1.30), so the guard refuses and the fit trains on the retain
    # loss alone; on the full-size embedded models they do (docs/results/defenses.md, defenses-ubt-sets).
    assert dense_summary["detection"]["dense"]["auroc"] < 0.5
    assert chosen["separation"] < 2.0 and "no separate suspicious component" in chosen["guard"]
    assert chosen["m"] == 0 and dense_summary["unlearned_pairs"] == 0
    assert dense_summary["epochs"] == 1  # nothing to unlearn: one epoch of the retain loss, not the most rounds
    assert dense_summary["steps"] > 0 and dense_summary["asr"] is not None


def _dense_args(benchmark, poisoned, run, *overrides: str) -> list[str]:
    return ["fit", "--config", "configs/embedded/ubt_dense.yaml", "--trainer.default_root_dir", str(run),
            "--data.init_args.embedded", "null", "--data.init_args.eval.directory", benchmark.eval_dir,
            "--data.init_args.batch_size", "64", "--trainer.enable_progress_bar", "false",
            "--model.init_args.model.pretrained", str(poisoned / "checkpoints" / "last.ckpt"),
            "--data.init_args.trigger_dir", str(poisoned / "trigger"),
            "--data.init_args.train_shards", benchmark.finetune_urls,
            "--model.init_args.discover.train_shards", benchmark.pretrain_urls,
            "--model.init_args.discover.poison.rate", "0.3", "--model.init_args.discover.report_k", "[100]",
            "--trainer.max_epochs", "12", *overrides]


TOKEN_LOCAL = ("--model.init_args.trainable", "null")
"""The token-local trainable set (the module's default, which the shipped configs widen to every parameter)."""


def _dense_unlearning(benchmark, poisoned, run, *overrides: str) -> dict:
    """The dense UBT config's fit on `poisoned` (30% poisoned) with at most 12 rounds; its summary."""
    BackdoorCLI(args=_dense_args(benchmark, poisoned, run, *overrides))
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def token_local_unlearning(learning_benchmark, small_poisoned_run, tmp_path_factory):
    """(run directory, summary) of the dense UBT config's fit on the strongly poisoned small RN, with the
    token-local trainable set (`trainable: null`; the config's default is every parameter)."""
    run = tmp_path_factory.mktemp("token_local") / "run"
    return run, _dense_unlearning(learning_benchmark, small_poisoned_run[0], run, *TOKEN_LOCAL)


def test_the_dense_set_on_a_strongly_poisoned_model_is_the_planted_pairs_and_adaptive_unlearning_stops_on_its_signal(
        token_local_unlearning):
    """Where the trigger collapses the poisoned images (30% poisoned, ASR ≈ 1), the mixture rule keeps a
    set of them: measured (2026-12-02) dense AUROC 0.978, D 4.4, 721 pairs in the upper component, the
    200 kept all poisoned. Unlearning them with the fixed recipe left this small RN's ASR at 1.0. The
    adaptive stage 2 in rounds (2026-12-07; a round here is one epoch of 7 steps): no round halved the held-out
    pairs' relative match, so λ_forget doubled after each, and after round 7 (λ 64) the match was 0.14
    (from 0.82): it stopped on that signal with ASR 0.21 and CA 0.250, from 0.996 and 0.313, the CA proxy
    down 0.11 (`proxy_fell`)."""
    summary = token_local_unlearning[1]
    chosen = summary["suspicious_set"]
    assert summary["detection"]["dense"]["auroc"] >= 0.9
    assert chosen["guard"] is None and chosen["separation"] >= 2.0 and chosen["m"] == 200
    assert chosen["true_purity"] >= 0.95 and summary["unlearned_pairs"] == 200
    unlearning = summary["unlearning"]
    trace = unlearning["trace"]
    assert unlearning["stopped"] == "signal" and unlearning["held_out_pairs"] == 50
    assert trace[-1]["relative_match"] <= 0.2 < 0.5 < trace[0]["relative_match"]
    assert unlearning["lambda_forget"] > 1.0  # it had to strengthen the forget loss
    assert unlearning["rounds"] < 12 and summary["steps"] < 12 * 7  # stopped before the fit's 12 rounds
    assert summary["before"]["asr"] >= 0.95 and summary["asr"] <= 0.4
    assert summary["ca_top1"] >= summary["before"]["ca_top1"] - 0.1


def test_which_parameters_must_move_where_the_token_local_set_is_slow(learning_benchmark, small_poisoned_run,
                                                                      token_local_unlearning, tmp_path):
    """The UBT unlearning issue's part 3 on the one model here where the fixed recipe fails (the strongly
    poisoned small RN above): the same set unlearned with every parameter trainable instead of the
    token-local ones (token embeddings, the RN's last stage), and the tower swap of the token-local result
    (which side carries the removal). Measured (2026-12-07): token-local 7 rounds to λ 64, ASR 0.21, CA 0.250;
    every parameter 2 rounds at λ 2, ASR 0.000, CA 0.260 (from 0.996, 0.313). Tower swap of the token-local
    result: the image tower put back gives ASR 0.974 and CA 0.323, the text side put back ASR 0.956 and CA
    0.297: the removal needs both sides' changes, and the CA cost is mostly the image tower's."""
    from lightning_app.tower_swap import tower_swap

    poisoned, _ = small_poisoned_run
    local_run, local = token_local_unlearning
    wide = _dense_unlearning(learning_benchmark, poisoned, tmp_path / "wide")  # the shipped config: every parameter
    rows = dict((label, (ca, asr)) for label, ca, asr in tower_swap(
        local_run, poisoned, learning_benchmark.eval_dir, poisoned / "trigger", "triangle"))
    for name, summary in (("token-local", local), ("every parameter", wide)):
        u = summary["unlearning"]
        print(name, "rounds", u["rounds"], "λ", u["lambda_forget"], "stopped", u["stopped"], "CA", summary["ca_top1"],
              "ASR", summary["asr"], "parameters", summary["trainable_parameters"])
    print("tower swap of the token-local result", rows)
    assert wide["trainable_parameters"] > 1.2 * local["trainable_parameters"]
    assert wide["unlearning"]["stopped"] == local["unlearning"]["stopped"] == "signal"
    assert wide["unlearning"]["rounds"] < local["unlearning"]["rounds"]  # wider is faster
    assert wide["asr"] <= 0.05 < local["asr"] and wide["ca_top1"] >= local["ca_top1"] - 0.02
    assert rows["defended, image tower put back"][1] >= 0.8 and rows["defended, text side put back"][1] >= 0.8
    assert rows["defended, image tower put back"][0] > rows["defended"][0]  # the CA cost is on the image side


def test_an_adaptive_unlearning_killed_mid_round_resumes_to_the_straight_runs_weights_and_trace(
        learning_benchmark, small_poisoned_run, tmp_path):
    """Rounds of 7 steps, at most 3: a run failed at step 10 (mid round 2, after its step-10 checkpoint) and
    resumed with `--ckpt_path last` ends with the weights, λ_forget, rounds and trace of a run never stopped."""
    import torch
    from lightning.pytorch import Callback

    class Preempted(RuntimeError):
        pass

    class StopAt(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 10:
                raise Preempted("stopped at step 10")

    poisoned, _ = small_poisoned_run
    settings = ("--trainer.max_epochs", "3", "--checkpoint_every_n_steps", "5", *TOKEN_LOCAL)  # 3 rounds here
    straight = _dense_unlearning(learning_benchmark, poisoned, tmp_path / "straight", *settings)
    run = tmp_path / "resumed"
    cli = BackdoorCLI(args=_dense_args(learning_benchmark, poisoned, run, *settings)[1:], run=False)
    cli.trainer.callbacks.append(StopAt())
    with pytest.raises(Preempted):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    resumed = _dense_unlearning(learning_benchmark, poisoned, run, *settings, "--ckpt_path", "last")
    weights = [torch.load(r / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
               for r in (tmp_path / "straight", run)]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert straight["unlearning"]["rounds"] >= 2  # the kill fell inside a later round than the first
    assert resumed["unlearning"] == straight["unlearning"]
