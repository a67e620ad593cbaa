"""The rules that keep stages readable side by side (the house style): identical eval.py, the
shared flags first and alike in every parser, code copied from the stage before left unchanged
unless the stage names it in its LESSON list (which its README repeats), short files and lines,
README headings and exercises, --help listing the flags."""
import ast
import difflib
import re

import pytest
from conftest import REPO, STAGES, load_stage_module

SHARED_FLAGS = [
    "--data", "--epochs", "--batch-size", "--lr", "--seed", "--device", "--num-workers", "--out",
    "--resume", "--overwrite", "--labels", "--ferplus", "--ferplus-mode", "--tensorboard", "--wandb",
]
README_HEADINGS = [
    "## What you'll learn", "## Run it", "## What changed", "## Results", "## Sample output",
    "## Exercises", "## Projects",
]
SUMMARY = ["- **Adds:**", "- **The number:**", "- **Read first:**"]  # the three lines under the title
# A stage copied from an earlier stage than the one numbered before it.
COPIED_FROM = {"07_fast": "03_attention"}
PAIRS = [(COPIED_FROM.get(stage, previous), stage) for previous, stage in zip(STAGES, STAGES[1:])]
TRAIN_DIFF_BUDGET = 65  # changed code lines between a stage's train.py and the one it copies
# 07_fast's lesson is the training loop itself (batching, precision, processes), not a recipe;
# 06_transfer's adds a function, start_model, beside the recipe changes of a new data set.
LARGER_DIFF_BUDGET = {"06_transfer": 75, "07_fast": 230}
# The house style aims at 200 lines: the plumbing every stage shares (the shared flags, starting a
# run, finding its data, resuming, the checkpoint's bookkeeping keys, the logs) lives in common/,
# so train.py holds the recipe. A stage whose lesson is more than a recipe keeps the rest of it in
# a file of its own beside train.py (06_transfer's transfer.py, 07_fast's augment.py and ddp.py).
# 07_fast's loop still runs longer: it passes the augmentation, the precision and the loss scaler
# to every step, and sums the epoch's numbers over the processes.
TRAIN_PY_LINES = 200
LONGER_TRAIN_PY = {"07_fast": 240}
MODEL_PY_LINES = 120
ATTENTION_MODEL_PY_LINES = 170  # a model with CBAM attention (03, and 07, which reuses it)
LINE_LENGTH = 100
# The line rule covers every .py file in every numbered folder: the stages that train and the
# tools beside them (05_deploy's scripts, 06_transfer's transfer.py, 07_fast's ddp.py ...).
STAGE_FOLDERS = sorted(p.name for p in REPO.glob("[0-9][0-9]_*") if p.is_dir())
# Compared by other rules: get_args by the flags its parser holds, build_model by its signature
# (its body names the stage's own network class).
NOT_COMPARED_AS_CODE = {"get_args", "build_model"}


def without_docstring(text):
    return re.sub(r'^""".*?"""\n', "", text, count=1, flags=re.S)


def definitions(stage, name):
    """{function or class name: its source, comments included} at the top level of stage/name."""
    text = (REPO / stage / name).read_text()
    tree = ast.parse(text)
    kinds = (ast.FunctionDef, ast.ClassDef)
    return {node.name: ast.get_source_segment(text, node) for node in tree.body if isinstance(node, kinds)}


def lesson(stage, name="train.py"):
    """(the LESSON list of stage/name, the line that defines it), or ([], None) without one."""
    text = (REPO / stage / name).read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] == ["LESSON"]:
            return ast.literal_eval(node.value), ast.get_source_segment(text, node)
    return [], None


def flags(stage):
    """{flag: what a user sees of it} read from the stage's own argparse parser, in parser order."""
    _, parser = load_stage_module(stage, "train").get_args([])
    found = {}
    for action in parser._actions:
        if not action.option_strings or action.option_strings[0] == "-h":
            continue
        kind = getattr(action.type, "__name__", action.type)
        found[action.option_strings[0]] = {"help": action.help, "default": action.default,
                                           "type": kind, "choices": action.choices,
                                           "action": type(action).__name__}
    return found


def changed_code(previous, stage, name):
    """Names defined in both files whose source differs."""
    before = definitions(previous, name)
    after = definitions(stage, name)
    shared = (before.keys() & after.keys()) - NOT_COMPARED_AS_CODE
    return sorted(n for n in shared if before[n] != after[n])


def changed_flags(previous, stage):
    before = flags(previous)
    after = flags(stage)
    return sorted(f for f in before.keys() & after.keys() if before[f] != after[f])


def test_every_stage_has_its_files():
    assert STAGES[0] == "01_baseline"
    for stage in STAGES:
        for name in ("model.py", "train.py", "eval.py", "README.md"):
            assert (REPO / stage / name).is_file(), f"{stage}/{name}"


@pytest.mark.parametrize("stage", STAGES[1:])
def test_eval_py_is_identical_except_its_docstring(stage):
    first = without_docstring((REPO / STAGES[0] / "eval.py").read_text())
    assert without_docstring((REPO / stage / "eval.py").read_text()) == first


@pytest.mark.parametrize("stage", STAGES)
def test_shared_flags_come_first_in_one_order(stage):
    assert list(flags(stage))[:len(SHARED_FLAGS)] == SHARED_FLAGS


@pytest.mark.parametrize("previous,stage", PAIRS)
def test_flags_copied_from_the_previous_stage_are_unchanged_unless_a_lesson(previous, stage):
    # help text, default, type, choices: what --help shows must not drift between stages
    unlisted = [flag for flag in changed_flags(previous, stage) if flag not in lesson(stage)[0]]
    assert not unlisted, f"{stage} changes {unlisted} from {previous}: undo it, or add it to LESSON"


@pytest.mark.parametrize("name", ["train.py", "model.py"])
@pytest.mark.parametrize("previous,stage", PAIRS)
def test_code_copied_from_the_previous_stage_is_unchanged_unless_a_lesson(previous, stage, name):
    unlisted = [n for n in changed_code(previous, stage, name) if n not in lesson(stage, name)[0]]
    assert not unlisted, (f"{stage}/{name} changes {unlisted} from {previous}: undo it, or add "
                          f"it to LESSON in {stage}/{name} and its README")


@pytest.mark.parametrize("name", ["train.py", "model.py"])
@pytest.mark.parametrize("previous,stage", PAIRS)
def test_lesson_names_only_what_really_changed(previous, stage, name):
    changed = changed_code(previous, stage, name)
    if name == "train.py":
        changed += changed_flags(previous, stage)
    stale = [entry for entry in lesson(stage, name)[0] if entry not in changed]
    assert not stale, f"{stage}/{name}: LESSON lists {stale}, which {previous} already has as is"


@pytest.mark.parametrize("stage", STAGES[1:])
def test_readme_repeats_the_lesson(stage):
    readme = (REPO / stage / "README.md").read_text()
    for name in ("train.py", "model.py"):
        entries, line = lesson(stage, name)
        if name == "train.py":
            assert line, f"{stage}/train.py has no LESSON list"
        if line:
            assert line in readme, f"{stage}/README.md does not repeat `{line}` of {name}"


@pytest.mark.parametrize("stage", STAGES)
def test_build_model_has_the_same_signature_everywhere(stage):
    def signature(name):
        tree = ast.parse((REPO / name / "model.py").read_text())
        node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "build_model")
        return ast.dump(node.args)

    assert signature(stage) == signature(STAGES[0])


@pytest.mark.parametrize("previous,stage", PAIRS)
def test_consecutive_train_py_differ_only_a_little(previous, stage):
    # the module docstring is each stage's own introduction; the code below it is what must stay close
    a = without_docstring((REPO / previous / "train.py").read_text()).splitlines()
    b = without_docstring((REPO / stage / "train.py").read_text()).splitlines()
    changed = sum(1 for line in difflib.unified_diff(a, b, lineterm="", n=0)
                  if line[:1] in "+-" and not line.startswith(("+++", "---")))
    budget = LARGER_DIFF_BUDGET.get(stage, TRAIN_DIFF_BUDGET)
    assert changed <= budget, f"{previous} -> {stage}: {changed} changed lines"


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


@pytest.mark.parametrize("stage", STAGES)
def test_stage_files_stay_short(stage):
    train_lines = len((REPO / stage / "train.py").read_text().splitlines())
    assert train_lines <= LONGER_TRAIN_PY.get(stage, TRAIN_PY_LINES), f"{stage}/train.py: {train_lines}"
    model = (REPO / stage / "model.py").read_text()
    limit = ATTENTION_MODEL_PY_LINES if "class CBAM(" in model else MODEL_PY_LINES
    assert len(model.splitlines()) <= limit, f"{stage}/model.py: {len(model.splitlines())} lines"


@pytest.mark.parametrize("folder", STAGE_FOLDERS)
def test_stage_lines_are_at_most_100_characters(folder):
    files = sorted((REPO / folder).rglob("*.py"))
    assert files, f"{folder}: no .py files to check"
    long = [
        f"{path.relative_to(REPO)}:{number} ({len(line)})"
        for path in files
        for number, line in enumerate(path.read_text().splitlines(), start=1)
        if len(line) > LINE_LENGTH
    ]
    assert not long, f"lines over {LINE_LENGTH} characters: {long}"


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
def test_stage_readme_opens_with_a_summary_and_ends_with_three_exercises(stage):
    text = (REPO / stage / "README.md").read_text()
    lines = text.splitlines()
    assert lines[0].startswith(f"# {stage}")
    summary = [line for line in lines[1:6] if line]
    assert [line[:len(start)] for line, start in zip(summary, SUMMARY)] == SUMMARY, summary[:3]
    exercises = text[text.index("## Exercises"):text.index("## Projects")]
    assert re.findall(r"^(\d+)\. ", exercises, flags=re.M) == ["1", "2", "3"]


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
