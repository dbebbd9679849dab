"""Tables into the docs' blocks: only once a stage has run, never dropping a row or seed the docs quote
unless asked, only the named blocks, and the plot as a linked figure."""

from __future__ import annotations

import pytest
from helpers.experiments import SELECTION, toy


def test_the_docs_get_the_runs_plot_as_a_figure_linked_from_each_block(tmp_path):
    from lightning_app.experiments.docs_blocks import write_views
    from lightning_app.experiments.plots import plot_panels

    doc, figure = tmp_path / "docs" / "results.md", tmp_path / "docs" / "figures" / "best.png"
    experiment = toy(tmp_path, SELECTION.replace("    plot: runs\n", f"    plot: runs\n    files: [{doc}]\n"
                                                                         f"    figure: {figure}\n"))
    rows = [{"stage": stage, "objective": objective, "lr": lr, "seed": 0, "ca_top1": 0.8, "asr": 0.01}
            for stage in ("ft", "cleanclip") for objective in ("mmcl", "mmcl_ssl") for lr in ("0.001", "0.002")]
    write_views(experiment, rows)
    assert not figure.exists()  # only --update-docs writes into the docs
    written = write_views(experiment, rows, update_docs=True)
    assert figure in written and figure.read_bytes() == (tmp_path / "runs" / "best.png").read_bytes()
    assert "![best: CA against ASR](figures/best.png)\n<!-- /results:best -->" in doc.read_text()
    # one panel per value of the first row key that is not the colour: two tiers' runs never share axes
    table = experiment.tables[0]
    table.rows = ["lr", "objective"]
    assert plot_panels(table, rows) == ("lr", ["0.001", "0.002"])
    assert plot_panels(table, [r for r in rows if r["lr"] == "0.001"]) == (None, [""])
    with pytest.raises(ValueError, match="figure .* needs a plot"):
        toy(tmp_path, SELECTION.replace("    plot: runs\n", "    plot: false\n    figure: docs/best.png\n"))


def test_docs_get_a_table_only_once_one_of_its_stages_has_run(tmp_path):
    from lightning_app.experiments.docs_blocks import write_views

    doc = tmp_path / "results.md"
    experiment = toy(tmp_path, SELECTION.replace("    plot: runs\n", f"    plot: false\n    files: [{doc}]\n"))
    write_views(experiment, [{"stage": "pretrain", "objective": "mmcl", "seed": 0, "ca_top1": 0.9, "asr": 0.9}],
                update_docs=True)
    assert not doc.exists() and (tmp_path / "runs" / "best.md").exists()
    write_views(experiment, [{"stage": "cleanclip", "objective": "mmcl", "lr": "0.001", "seed": 0, "ca_top1": 0.8,
                              "asr": 0.01}], update_docs=True)
    assert "<!-- results:best -->" in doc.read_text() and "| mmcl | 1 | 1/1 | 0.800 |" in doc.read_text()



def test_docs_update_refuses_to_drop_rows_or_seeds_the_docs_quote_unless_asked(tmp_path):
    from lightning_app.experiments.docs_blocks import write_views

    doc = tmp_path / "results.md"
    experiment = toy(tmp_path, SELECTION.replace("    plot: runs\n", f"    plot: false\n    files: [{doc}]\n"))
    run = {"stage": "cleanclip", "lr": "0.001", "ca_top1": 0.8, "asr": 0.01}
    both = [{**run, "objective": objective, "seed": seed} for objective in ("mmcl", "mmcl_ssl") for seed in (0, 1)]
    write_views(experiment, both, update_docs=True)
    quoted = doc.read_text()
    assert "| mmcl | 2 |" in quoted and "| mmcl_ssl | 2 |" in quoted
    fewer = [row for row in both if row["objective"] == "mmcl" or row["seed"] == 0]
    with pytest.raises(ValueError, match=r"results.md \[best\] mmcl_ssl: n = 2 → 1"):
        write_views(experiment, fewer, update_docs=True)
    with pytest.raises(ValueError, match=r"\[best\] mmcl_ssl: n = 2 → 0"):
        write_views(experiment, [row for row in both if row["objective"] == "mmcl"], update_docs=True)
    assert doc.read_text() == quoted  # nothing written when refused
    assert "mmcl_ssl" not in (tmp_path / "runs" / "best.md").read_text()  # RUNS/ is written either way
    write_views(experiment, both + [{**run, "objective": "mmcl", "seed": 2}], update_docs=True)  # more is fine
    assert "| mmcl | 3 |" in doc.read_text()
    write_views(experiment, fewer, update_docs=True, drop_rows=True)
    assert "| mmcl_ssl | 1 |" in doc.read_text() and "| mmcl | 2 |" in doc.read_text()

def test_docs_update_of_named_blocks_leaves_the_others_and_their_quoted_rows_alone(tmp_path, capsys):
    from lightning_app.experiments.__main__ import main
    from lightning_app.experiments.docs_blocks import write_views

    doc = tmp_path / "results.md"
    text = SELECTION.replace("    plot: runs\n", f"    plot: false\n    files: [{doc}]\n")
    second = text[text.index("  - block: best"):].replace("block: best", "block: second")
    experiment = toy(tmp_path, text + second)
    run = {"stage": "cleanclip", "lr": "0.001", "ca_top1": 0.8, "asr": 0.01}
    both = [{**run, "objective": objective, "seed": 0} for objective in ("mmcl", "mmcl_ssl")]
    write_views(experiment, both, update_docs=True, blocks=["best"])
    quoted = doc.read_text()
    assert "| mmcl_ssl | 1 |" in quoted and "results:second" not in quoted
    # the runs `best` quotes are elsewhere now; `second` gets this machine's two seeds of mmcl
    here = [{**run, "objective": "mmcl", "seed": seed, "asr": 0.02} for seed in (0, 1)]
    with pytest.raises(ValueError, match=r"\[best\] mmcl_ssl: n = 1 → 0"):
        write_views(experiment, here, update_docs=True)
    write_views(experiment, here, update_docs=True, blocks=["second"])
    updated = doc.read_text()
    assert updated != quoted
    assert updated.startswith(quoted.rstrip("\n"))  # best as it was
    assert "| mmcl | 2 |" in updated.split("<!-- results:second -->")[1]
    with pytest.raises(ValueError, match=r"--blocks \['thrid'\]: .*\['best', 'second'\]"):
        write_views(experiment, here, update_docs=True, blocks=["thrid"])
    # a misspelt block fails before a run starts: --dry-run would print the plan and return 0 otherwise
    assert main(["run", str(tmp_path / "toy.yaml"), "--dry-run", "--update-docs", "--blocks", "thrid"]) == 1
    assert "--blocks ['thrid']" in capsys.readouterr().err
