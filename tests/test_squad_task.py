"""What both QA tasks share through qatune.data.squad: the pair checks of ``answer_batch`` and the SQuAD-side
task methods, with the one deliberate difference (whose SQuAD version turns on v2) kept per task."""

from __future__ import annotations

import pytest

from qatune.data.squad.squad_task import SquadTaskMixin
from qatune.data.squad.squad_types import LoadReport, examples_from_pairs
from qatune.errors import DataError
from qatune.tasks import get_task


def test_examples_from_pairs_numbers_the_items_and_names_the_bad_one() -> None:
    examples = examples_from_pairs([("Who?", "Ada wrote it."), ["When?", "In 1843."]])
    assert [(e.id, e.question, e.context, e.answers) for e in examples] == [
        ("0", "Who?", "Ada wrote it.", []), ("1", "When?", "In 1843.", [])]
    assert examples_from_pairs([]) == []
    with pytest.raises(DataError, match=r"^item 1: expected a \(question, context\) pair, got dict$"):
        examples_from_pairs([("Who?", "Ada."), {"question": "Who?", "context": "Ada."}])
    with pytest.raises(DataError, match=r"^item 0: field 'context' is empty$"):
        examples_from_pairs([("Who?", "  ")])


@pytest.mark.parametrize("name", ["extractive_qa", "generative_qa"])
def test_both_qa_tasks_take_the_shared_squad_methods(name: str) -> None:
    task = get_task(name)
    assert isinstance(task, SquadTaskMixin)
    for method in ("read", "write_examples", "data_info", "prepare", "record", "score_files", "parse_request",
                   "to_request", "format_response"):
        assert getattr(type(task), method) is getattr(SquadTaskMixin, method), method


@pytest.mark.parametrize("name, expected", [("extractive_qa", True), ("generative_qa", False)])
def test_v2_follows_eval_data_for_extractive_and_train_data_for_generative(name: str, expected: bool) -> None:
    task = get_task(name)
    options = task.resolve_options({}, {"max_seq_length": 384}, "test")
    v1, v2 = LoadReport("train.json", version="1.1"), LoadReport("dev.json", version="2.0")
    assert task.prepare(options, v1, v2).version_2 is expected  # train v1.1, eval v2.0: the tasks differ
    assert task.prepare(options, None, v2).version_2 is True  # one split only: both use it
    assert task.prepare(options, v2, None).version_2 is True
    assert task.prepare(options, None, None).version_2 is False
    pinned = task.resolve_options({"version_2": False}, {"max_seq_length": 384}, "test")
    assert task.prepare(pinned, v2, v2).version_2 is False  # the config wins
    assert task.record(task.prepare(options, v2, v2)) == {"version_2_model": True, "null_threshold": None}
