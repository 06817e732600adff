"""Test-wide settings: never wait on the hub; tiny models and sample data shared by tests."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("QATUNE_CACHE_DIR", os.path.join(os.environ.get("TMPDIR", "/tmp"), "qatune-test-cache"))

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "qatune" / "resources" / "sample"
SHARED_SQUAD = REPO.parent / "shared" / "data" / "squad"


def squad_file(name: str) -> Path:
    """A file from ../shared/data/squad, or skip the test with a clear message."""
    path = SHARED_SQUAD / name
    if not path.is_file():
        pytest.skip(f"SQuAD data not found at {path}; these tests read ../shared/data/squad beside the checkout")
    return path



def digests(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) -> SHA-256 of its bytes: proves a user's files are untouched."""
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def cli(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    """Run ``qatune ARGV`` in-process; return (exit code, stdout, stderr)."""
    from qatune.cli import main

    capsys.readouterr()
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def assert_clean_error(rc: int, err: str, *fragments: str) -> None:
    """A user error: exit 2, one ``qatune: error:`` line holding every fragment, no traceback."""
    assert rc == 2, err
    assert "Traceback" not in err and "internal error" not in err, err
    assert "qatune: error:" in err, err
    for fragment in fragments:
        assert fragment in err, f"{fragment!r} not in stderr:\n{err}"


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised BERT QA model + the MiniLM WordPiece tokenizer, saved as a HF model dir."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForQuestionAnswering

    from qatune.backends.hf.models import resolve_model

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model("minilm"))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertForQuestionAnswering(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lora_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One quickly trained tiny LoRA run, shared read-only by the inference/serving tests."""
    import qatune

    out = tmp_path_factory.mktemp("tiny-lora-run") / "lora"
    qatune.train(dict(model=str(tiny_model_dir), method="lora", train=str(SAMPLE / "train.json"),
                      max_train_samples=20, epochs=1, max_seq_length=128, doc_stride=32, tracking=False,
                      do_eval=False, output=str(out)), progress=False)
    return out


@pytest.fixture
def one_thread():
    """Two shared cores: one intra-op thread is many times faster than two fighting other processes."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A features cache shared by the tests of one module."""
    return tmp_path_factory.mktemp("features-cache")
