"""The SQuAD side of a QA task, shared by extractive and generative QA: reading and writing SQuAD data, the
SQuAD version it records, v2 detection, ``qatune score`` and the ``{"question", "context"}`` request /
:class:`~qatune.data.squad.squad_types.Answer` response schema. The tasks differ in how answers are
produced (spans or generated text), not in any of this, so it is written once, here, below both task
packages (task packages never import each other).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Literal, Sequence

from qatune.data.squad.squad_types import LoadReport, QAExample


class SquadTaskMixin:
    """The Task-contract methods both QA tasks share; their options carry ``version_2`` and ``null_threshold``.

    ``squad_version_from``: whose SQuAD version (``"train"`` or ``"eval"`` data, the other as fallback) turns
    on v2 (no-answer) when the config leaves ``version_2`` unset. Each task sets it and says why.
    """

    squad_version_from: ClassVar[Literal["train", "eval"]]

    # -- options and data -----------------------------------------------------------------------------
    def read(self, source: str, max_samples: int | None, split: str | None = None
             ) -> tuple[list[QAExample], LoadReport]:
        from qatune.data.squad.squad_schema import load_qa_examples

        return load_qa_examples(source, max_samples=max_samples, split=split)

    def write_examples(self, examples: Sequence[QAExample], report: LoadReport, path: Any) -> None:
        """SQuAD JSON (the reader reads it back to the same examples)."""
        from qatune.core.jsonio import write_json
        from qatune.data.squad.squad_schema import examples_to_squad_json

        write_json(path, examples_to_squad_json(list(examples), report.version))

    def data_info(self, report: LoadReport) -> dict[str, Any]:
        return {"squad_version": report.version}

    def prepare(self, options: Any, train_report: Any, eval_report: Any) -> Any:
        """SQuAD v2 (no-answer) when the config says so, else when the data ``squad_version_from`` names
        (else the other split's) is v2."""
        if options.version_2 is not None:
            return options
        preferred, fallback = ((train_report, eval_report) if self.squad_version_from == "train"
                               else (eval_report, train_report))
        report = preferred or fallback
        return dataclasses.replace(options, version_2=bool(report is not None and report.version == "2.0"))

    def record(self, options: Any) -> dict[str, Any]:
        return {"version_2_model": bool(options.version_2), "null_threshold": options.null_threshold}

    def score_files(self, data: str, predictions: str, na_probs: str | None = None, na_prob_thresh: float = 1.0,
                    version: str | None = None) -> dict[str, Any]:
        """The official SQuAD metrics of a predictions file (``qatune score``); see
        :func:`qatune.data.squad.squad_scoring.score_files`."""
        from qatune.data.squad.squad_scoring import score_files

        return score_files(data, predictions, na_probs, na_prob_thresh, version)

    # -- inference -----------------------------------------------------------------------------------
    def parse_request(self, payload: Any, where: str) -> tuple[str, str]:
        from qatune.data.squad.squad_types import parse_request

        return parse_request(payload, where)

    def to_request(self, example: QAExample) -> dict[str, str]:
        return {"question": example.question, "context": example.context}

    def format_response(self, prediction: Any) -> Any:
        if isinstance(prediction, list):
            return [p.to_dict() for p in prediction]
        return prediction.to_dict()
