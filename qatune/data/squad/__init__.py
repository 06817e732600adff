"""SQuAD data and its official scoring, shared by the QA tasks (extractive and generative).

``squad_schema``: reading, validating and repairing SQuAD-style records from any format;
``squad_types``: the in-memory records; ``squad_metrics``: the official EM/F1 (v1.1) and v2.0 scripts;
``squad_scoring``: answers per question -> official metrics, the tuned v2 no-answer threshold and
``na_probs.json``. Nothing here knows how the answers were produced (spans or generated text).
"""
