"""A module declares the columns its summary sections become; the study's views name no module."""

from __future__ import annotations

import ast
from pathlib import Path

import modules
from lightning_app.experiments.fields import changes_weights, heading, is_count, summary_columns
from modules.core.summary_columns import SummaryColumns


def test_a_section_becomes_prefixed_columns_nested_filtered_and_bools_as_rates():
    oracle = SummaryColumns("oracle", "oracle_", bools_as_numbers=True, headings={"oracle_hit": "found it"})
    assert oracle.columns({"oracle": {"hit": True, "n": 3}}) == {"oracle_hit": 1.0, "oracle_n": 3}
    assert oracle.columns({"other": {}}) == {} and oracle.heading_of("oracle_hit") == "found it"
    assert oracle.heading_of("oracle_n") is None  # no heading declared: the runner's generic one
    detection = SummaryColumns("detection", "", nested=True, skip=frozenset({"num_pairs"}))
    assert detection.columns({"detection": {"weak": {"auroc": 0.9, "num_pairs": 10}}}) == {"weak_auroc": 0.9}
    per_trigger = SummaryColumns("metrics", "asr_", only=("val/asr_",), strip="val/asr_", heading="ASR {key}")
    assert per_trigger.columns({"metrics": {"val/asr_sig": 0.5, "val/ca_top1": 0.9}}) == {"asr_sig": 0.5}
    assert per_trigger.heading_of("asr_sig") == "ASR sig"


def test_the_shipped_modules_declarations_make_the_columns_and_headings_the_tables_use():
    summary = {"module": "OracleTriggerFinder", "oracle": {"victim_label_correct": False, "candidates": 12},
               "suspicious_set": {"m": 200}, "metrics": {"val/cohesion_clean": 0.3}}
    row = summary_columns(summary)
    assert row == {"oracle_victim_label_correct": 0.0, "oracle_candidates": 12, "set_m": 200, "cohesion_clean": 0.3}
    assert heading("set_m") == "pairs unlearned" and is_count("set_m") and is_count("unlearned_badnet")
    assert not is_count("oracle_victim_label_correct")
    assert not changes_weights("SuspiciousPairDiscovery") and changes_weights("CleanCLIP")


def test_the_experiment_runner_names_no_module_class():
    """Adding a module or a summary field is an edit of the module, not of the runner's views."""
    used = set()
    for path in Path("lightning_app/experiments").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                used.add(node.value)  # a string that is exactly a class name, as `module in ("ClassName", ...)`
            elif isinstance(node, (ast.Name, ast.alias)):
                used.add(getattr(node, "id", None) or node.name)
    named = sorted(set(modules.__all__) & used)
    assert named == [], f"lightning_app/experiments names {named}: declare it on the module instead"
