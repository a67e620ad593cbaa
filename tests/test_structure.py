"""The rules that keep stages readable side by side (the house style): identical eval.py,
identical shared flag block, small train.py diffs, README headings, --help listing the flags."""
import difflib
import re

import pytest
from conftest import REPO, STAGES

SHARED_FLAGS = ["--data", "--epochs", "--batch-size", "--lr", "--seed", "--device", "--num-workers", "--out", "--resume",
                "--overwrite"]
README_HEADINGS = ["## What you'll learn", "## Run it", "## What changed", "## Results", "## Sample output", "## Exercises"]
TRAIN_DIFF_BUDGET = 60  # changed lines between a stage's train.py and the one it was copied from
# A stage copied from an earlier stage than the one numbered before it, and the budget of a stage whose
# lesson is the training loop itself (batching, precision, processes) rather than a recipe.
COPIED_FROM = {"07_fast": "03_attention"}
LOOP_STAGE_BUDGET = {"07_fast": 170}
LOOP_STAGE_LINES = {"07_fast": 275}  # its loop also shares the run folder, the stop and the sums between processes
PAIRS = [(COPIED_FROM.get(stage, previous), stage) for previous, stage in zip(STAGES, STAGES[1:])]


def without_docstring(text):
    return re.sub(r'^""".*?"""\n', "", text, count=1, flags=re.S)


def test_every_stage_has_its_files():
    assert STAGES[0] == "01_baseline"
    for stage in STAGES:
        for name in ("model.py", "train.py", "eval.py", "README.md"):
            assert (REPO / stage / name).is_file(), f"{stage}/{name}"


@pytest.mark.parametrize("stage", STAGES[1:])
def test_eval_py_is_identical_except_its_docstring(stage):
    first = without_docstring((REPO / STAGES[0] / "eval.py").read_text())
    assert without_docstring((REPO / stage / "eval.py").read_text()) == first


@pytest.mark.parametrize("stage", STAGES[1:])
def test_shared_flags_are_identical_in_order_and_help(stage):
    def flags(name):  # the flag names and help texts, defaults may differ between stages
        text = (REPO / name / "train.py").read_text()
        block = text[text.index("def get_args("):text.index("# stage-specific flags")]
        return re.findall(r'add_argument\("(--[a-z-]+)".*?help="([^"]*)', block, flags=re.S)

    assert flags(stage) == flags(STAGES[0])


@pytest.mark.parametrize("previous,stage", PAIRS)
def test_consecutive_train_py_differ_only_a_little(previous, stage):
    # the module docstring is each stage's own introduction; the code below it is what must stay close
    a = without_docstring((REPO / previous / "train.py").read_text()).splitlines()
    b = without_docstring((REPO / stage / "train.py").read_text()).splitlines()
    changed = sum(1 for line in difflib.unified_diff(a, b, lineterm="", n=0)
                  if line[:1] in "+-" and not line.startswith(("+++", "---")))
    assert changed <= LOOP_STAGE_BUDGET.get(stage, TRAIN_DIFF_BUDGET), f"{previous} -> {stage}: {changed} changed lines"


def test_copied_stages_name_their_source_in_the_readme():
    for stage, source in COPIED_FROM.items():
        assert stage in STAGES and source in STAGES
        assert f"git diff --no-index --stat {source} {stage}" in (REPO / stage / "README.md").read_text()


@pytest.mark.parametrize("stage", STAGES)
def test_train_py_keeps_the_section_order(stage):
    text = (REPO / stage / "train.py").read_text()
    order = ["def get_args(", "def build_train_transform(", "def build_loaders(", "def train_one_epoch(",
             "def main(", 'if __name__ == "__main__":']
    positions = [text.index(name) for name in order]
    assert positions == sorted(positions)
    assert len(text.splitlines()) <= LOOP_STAGE_LINES.get(stage, 250)


@pytest.mark.parametrize("stage", STAGES)
def test_model_py_does_not_import_common(stage):
    lines = (REPO / stage / "model.py").read_text().splitlines()
    assert not [line for line in lines if line.startswith(("from common", "import common"))]


@pytest.mark.parametrize("stage", STAGES)
def test_stage_readme_has_the_house_headings(stage):
    text = (REPO / stage / "README.md").read_text()
    positions = [text.find(h) for h in README_HEADINGS]
    assert -1 not in positions, [h for h, p in zip(README_HEADINGS, positions) if p == -1]
    assert positions == sorted(positions)


@pytest.mark.parametrize("stage", STAGES)
def test_help_lists_the_shared_flags(run, stage):
    result = run(f"{stage}/train.py", "--help")
    assert result.returncode == 0
    for flag in SHARED_FLAGS:
        assert flag in result.stdout


def test_readme_quick_start_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    quick = readme[readme.index("## Quick start"):].split("```")[1].splitlines()[1:]  # after the ```bash line
    commands = [line for line in quick if line and not line.startswith("#")]
    assert commands == ["pip install -r requirements.txt", "python 01_baseline/train.py", "python -m pytest"]
    assert "python -m pip install -r requirements.txt" in ci and "python -m pytest" in ci
