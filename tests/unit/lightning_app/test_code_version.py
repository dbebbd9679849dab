"""The code version a run records (lightning_app.code_version) and that it is not part of what the run measured."""

import subprocess

import pytest

from lightning_app.code_version import code_version
from lightning_app.pipelines import result_sha256


def _git(root, *args):
    subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True)


@pytest.fixture
def checkout(tmp_path):
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "study.jsonl").write_text("{}\n")
    (tmp_path / "README.md").write_text("# x\n")
    _git(tmp_path, "add", "a.py", "results", "README.md")
    _git(tmp_path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "-m", "one")
    return tmp_path


def test_the_commit_and_whether_tracked_files_differ_from_it(checkout):
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert code_version(checkout) == {"commit": head, "dirty": False}
    (checkout / "notes.txt").write_text("untracked")  # an untracked file is not the code
    assert code_version(checkout)["dirty"] is False
    (checkout / "a.py").write_text("x = 2\n")
    assert code_version(checkout) == {"commit": head, "dirty": True}


def test_a_study_writing_back_its_results_leaves_the_code_clean(checkout):
    (checkout / "results" / "study.jsonl").write_text("{}\n{}\n")  # the runner's --archive
    (checkout / "README.md").write_text("# x\n\n| table |\n")  # and its --update-docs
    assert code_version(checkout)["dirty"] is False
    (checkout / "a.py").write_text("x = 2\n")
    assert code_version(checkout)["dirty"] is True


def test_outside_a_checkout_there_is_no_version(tmp_path):
    assert code_version(tmp_path / "not-a-repo") is None


def test_a_run_made_on_other_code_measured_the_same_result():
    summary = {"ca_top1": 0.9, "asr": 0.1, "wall_time_s": 10.0, "code": {"commit": "a" * 40, "dirty": False}}
    remade = {**summary, "wall_time_s": 12.0, "code": {"commit": "b" * 40, "dirty": True}}
    assert result_sha256(summary) == result_sha256(remade)
    assert result_sha256(summary) != result_sha256({**summary, "asr": 0.2})
