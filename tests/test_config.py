"""Run configuration: YAML files, CLI flags and ``key=value`` overrides, and every config error a user can make.

Precedence is YAML < flags < overrides. Unknown keys and wrong types fail at load time with a
:class:`ConfigError` naming the key, never deep inside training.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import REPO, SHARED_SQUAD

from qatune.config import TrainConfig, config_from_dict, config_to_dict, load_config
from qatune.errors import ConfigError
from qatune.methods import registry

CONFIGS = REPO / "configs"
SHIPPED = ["squad_lora.yaml", "squad_full.yaml", "squad_v2_lora.yaml"]


def write_yaml(tmp_path: Path, data: dict, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------------
# The shipped configs


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_loads(name: str) -> None:
    cfg = load_config(CONFIGS / name)
    assert cfg.model == "minilm"
    assert cfg.max_train_samples == 2000 and cfg.max_eval_samples == 1000
    assert cfg.train and cfg.train.startswith("../shared/data/squad/")
    assert cfg.eval and cfg.eval.startswith("../shared/data/squad/")
    # every key carries a comment (a value line without '#' is undocumented)
    for line in (CONFIGS / name).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            assert "#" in line, f"{name}: key without a comment: {line!r}"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_data_paths_exist_from_repo_root(name: str) -> None:
    if not SHARED_SQUAD.is_dir():
        pytest.skip(f"SQuAD data not found at {SHARED_SQUAD}; the configs point at ../shared/data/squad")
    cfg = load_config(CONFIGS / name)
    for path in (cfg.train, cfg.eval):
        assert (REPO / path).is_file(), f"{name}: {path} does not exist relative to the repository root"


def test_lora_configs_have_a_full_lora_section() -> None:
    for name in ("squad_lora.yaml", "squad_v2_lora.yaml"):
        cfg = load_config(CONFIGS / name)
        assert cfg.method == "lora"
        section = cfg.options_for("lora")
        assert set(section) == {"r", "alpha", "dropout", "target_modules", "layers"}
        # the section is what the method will actually be built with
        assert registry.options(cfg.method, section) == section


def test_full_and_v2_configs() -> None:
    full = load_config(CONFIGS / "squad_full.yaml")
    assert full.method == "full" and full.learning_rate == pytest.approx(1e-4)
    assert full.method_options == {}
    v2 = load_config(CONFIGS / "squad_v2_lora.yaml")
    assert v2.version_2 is True and v2.null_threshold is None
    assert "dev-v2.0" in (v2.eval or "")


# ---------------------------------------------------------------------------------------------------
# YAML, flags, overrides and their precedence


def test_yaml_with_dotted_overrides(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"epochs": 1, "method": "lora", "lora": {"r": 4, "alpha": 8}})
    cfg = load_config(path, ["epochs=2", "lora.r=16", "lora.target_modules=[query,key]"])
    assert cfg.epochs == 2
    assert cfg.options_for("lora") == {"r": 16, "alpha": 8, "target_modules": ["query", "key"]}


def test_overrides_accept_dashes_and_create_sections(tmp_path: Path) -> None:
    cfg = load_config(None, ["max-seq-length=256", "ia3.target_modules=query"])
    assert cfg.max_seq_length == 256
    assert cfg.options_for("ia3") == {"target_modules": "query"}


def test_flags_win_over_yaml_and_overrides_win_over_flags(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"epochs": 1, "batch_size": 8, "seed": 1, "lora": {"r": 4}})
    cfg = load_config(path, ["epochs=5", "lora.r=32"], base={"epochs": 3, "batch_size": 4, "seed": None})
    assert cfg.epochs == 5  # override > flag > YAML
    assert cfg.batch_size == 4  # flag > YAML
    assert cfg.seed == 1  # a flag that was not given (None) leaves the YAML value alone
    assert cfg.options_for("lora") == {"r": 32}


def test_cli_precedence_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`qatune train --config X --flag ... key=value` builds the config with the same precedence."""
    import qatune.training.trainer as trainer
    from qatune.cli import main

    seen: list[TrainConfig] = []

    def fake_train(cfg: TrainConfig, progress: bool = True) -> trainer.TrainResult:
        seen.append(cfg)
        return trainer.TrainResult(Path(cfg.output), {})

    monkeypatch.setattr(trainer, "train", fake_train)
    path = write_yaml(tmp_path, {"epochs": 1, "batch_size": 8, "learning_rate": 1.0e-3, "lora": {"r": 4}})
    rc = main(["train", "--config", str(path), "--train", "x.json", "--epochs", "3", "--batch-size", "4",
               "--no-tracking", "epochs=4", "lora.r=16"])
    assert rc == 0
    (cfg,) = seen
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.tracking) == (4, 4, 1e-3, False)
    assert cfg.options_for("lora") == {"r": 16}


def test_override_values_are_yaml_scalars_but_text_fields_keep_their_text() -> None:
    cfg = load_config(None, ["learning_rate=3e-4", "do_eval=false", "max_eval_samples=null",
                             "run_name=0x10", "experiment=yes", "tracking_uri=http://127.0.0.1:5000"])
    assert cfg.learning_rate == pytest.approx(3e-4) and cfg.do_eval is False and cfg.max_eval_samples is None
    # YAML would read 0x10 as 16 and yes as True: names stay exactly as typed
    assert cfg.run_name == "0x10" and cfg.experiment == "yes"
    assert cfg.tracking_uri == "http://127.0.0.1:5000"


def test_yaml_float_without_dot_is_accepted(tmp_path: Path) -> None:
    # YAML 1.1 reads 5e-4 (no dot) as a string; it must still become a float
    path = tmp_path / "lr.yaml"
    path.write_text("learning_rate: 5e-4\n")
    assert load_config(path).learning_rate == pytest.approx(5e-4)


def test_resolved_config_round_trips() -> None:
    cfg = load_config(None, ["method=lora-last2", "lora.r=4", "epochs=3"])
    again = config_from_dict(config_to_dict(cfg))
    assert again == cfg


# ---------------------------------------------------------------------------------------------------
# Errors: unknown keys, bad types, bad values, bad files


@pytest.mark.parametrize("overrides, key", [
    (["epoch=2"], "epoch"),
    (["lroa.r=16"], "lroa"),  # a typo'd method section is not silently ignored
    (["learningrate=1e-3"], "learningrate"),
])
def test_unknown_key_is_named(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError, match=rf"unknown key '{key}'") as err:
        load_config(None, overrides)
    assert "Known keys:" in str(err.value) and "epochs" in str(err.value)


def test_unknown_key_in_yaml_names_the_file_and_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"epochs": 1, "batchsize": 8})
    with pytest.raises(ConfigError, match=r"run\.yaml: unknown key 'batchsize'"):
        load_config(path)


def test_unknown_method_option_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown option 'lora\.rank'.*alpha, dropout, layers, r, target_modules"):
        load_config(None, ["lora.rank=8"])


@pytest.mark.parametrize("override, key", [
    ("epochs=abc", "epochs"),
    ("epochs=2.5", "epochs"),
    ("epochs=true", "epochs"),  # a bool is not a number
    ("batch_size=[1,2]", "batch_size"),
    ("learning_rate=fast", "learning_rate"),
    ("do_eval=maybe", "do_eval"),
    ("max_train_samples=lots", "max_train_samples"),
    ("lora.r=abc", "lora.r"),
    ("lora.dropout=high", "lora.dropout"),
    ("lora.target_modules=3", "lora.target_modules"),
])
def test_bad_type_names_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=rf"config key '{key}'"):
        load_config(None, [override])


def test_bad_type_in_yaml(tmp_path: Path) -> None:
    path = write_yaml(tmp_path, {"epochs": "abc"})
    with pytest.raises(ConfigError, match=r"config key 'epochs': 'abc' is not a valid int"):
        load_config(path)


def test_empty_value_for_a_required_key(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("epochs:\n")
    with pytest.raises(ConfigError, match=r"config key 'epochs' needs a value"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"config key 'model' needs a value"):
        load_config(None, ["model="])


@pytest.mark.parametrize("override, match", [
    ("epochs=0", r"config key 'epochs': 0 is out of range; it must be >= 1"),
    ("batch_size=0", r"config key 'batch_size': 0 is out of range; it must be >= 1"),
    ("precision=fp16", r"precision must be auto, bf16 or fp32"),
    ("max_train_samples=0", r"config key 'max_train_samples': 0 is out of range; it must be >= 1"),
    ("method=bogus", r"unknown method 'bogus'. Choose one of: full, lora"),
    ("lora.layers=0", r"config key 'lora\.layers': 0 is out of range; it must be >= 1"),
    ("override-without-equals", r"must look like key=value"),
])
def test_bad_values(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .*nope\.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml is not valid YAML"):
        load_config(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- epochs\n- 2\n")
    with pytest.raises(ConfigError, match=r"list\.yaml must hold a mapping"):
        load_config(listing)


# ---------------------------------------------------------------------------------------------------
# Window settings: doc_stride must fit the window, or the tokenizer aborts with a Rust panic


def test_short_window_gets_a_fitting_default_stride() -> None:
    assert load_config(None, []).doc_stride == 128  # the documented default where it fits
    assert load_config(None, ["max_seq_length=256"]).doc_stride == 128
    assert load_config(None, ["max_seq_length=128"]).doc_stride == 32  # not 128, which cannot fit
    assert load_config(None, ["max_seq_length=64"]).doc_stride == 16
    assert load_config(None, ["max_seq_length=128", "doc_stride=64"]).doc_stride == 64  # explicit wins


def test_stride_that_does_not_fit_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match=r"doc_stride must be in \[0, 122\] for max_seq_length=128.*"
                                          r"lower doc_stride \(e.g. doc_stride=32\) or raise max_seq_length"):
        load_config(None, ["max_seq_length=128", "doc_stride=128"])
    with pytest.raises(ConfigError, match=r"doc_stride must be in"):
        load_config(None, ["doc_stride=-1"])
    with pytest.raises(ConfigError, match=r"'max_seq_length': 4 is out of range; it must be >= 6"):
        load_config(None, ["max_seq_length=4", "doc_stride=0"])


# ---------------------------------------------------------------------------------------------------
# Methods: lora-lastN and the documented per-method defaults


def test_lora_last4_means_layers_4() -> None:
    cfg = load_config(None, ["method=lora-last4"])
    assert cfg.method == "lora-last4"
    method, implied = registry.resolve(cfg.method)
    assert method.name == "lora" and implied == {"layers": 4}
    assert registry.options(cfg.method, cfg.options_for(method.name))["layers"] == 4
    # an explicit lora.layers wins over the name
    cfg = load_config(None, ["method=lora-last4", "lora.layers=2"])
    assert registry.options(cfg.method, cfg.options_for("lora"))["layers"] == 2
    with pytest.raises(ConfigError, match=r"unknown method 'full-last4'"):
        load_config(None, ["method=full-last4"])  # full has no layers option


def test_lora_last1_adapts_only_the_last_layer(tiny_model_dir: Path) -> None:
    from qatune.backends import get_backend
    from qatune.backends.hf.models import load_model_for_task
    from qatune.tasks import get_task

    method, _ = registry.resolve("lora-last1")
    options = registry.options("lora-last1", {"target_modules": ["query", "value"]})
    model = get_backend("hf").apply_method(load_model_for_task(str(tiny_model_dir), "AutoModelForQuestionAnswering"),
                                           method, options, get_task("extractive_qa").model)
    lora_layers = {name.split("layer.")[1].split(".")[0] for name, _ in model.named_parameters() if "lora_" in name}
    assert lora_layers == {"1"}  # the tiny model has layers 0 and 1


def test_per_method_default_learning_rates() -> None:
    """Documented defaults (Method.learning_rate, used when learning_rate is null): full fine-tuning moves
    every weight and needs the smallest step; adapters start from zero/identity and take larger ones."""
    lr = {name: registry.get(name).learning_rate for name in ("full", "lora", "loha", "ia3", "prefix", "ptuning",
                                                              "prompt")}
    assert lr["full"] == pytest.approx(1e-4)
    assert lr["lora"] == pytest.approx(2e-3)
    assert lr["loha"] == pytest.approx(1e-2)  # measured: docs/results/compare-squad-followup
    assert lr["ia3"] == pytest.approx(3e-2)   # measured: docs/results/compare-squad-followup
    assert lr["prefix"] == pytest.approx(1e-2)
    assert lr["full"] < lr["lora"] < lr["loha"] <= lr["prefix"] <= lr["prompt"]
    assert all(lr["full"] < v for k, v in lr.items() if k != "full")
    assert load_config(None, []).learning_rate is None  # None = the method's default
    for name in registry.names():
        assert registry.get(name).description, f"method {name} has no description"


# Sections: generic keys at the top level, the task's options under its section (qa:), the backend's under
# its name (hf:); the flat spelling from before sections still works and lands in the same place.
def test_flat_task_keys_still_work_and_land_in_the_task_section(tmp_path: Path) -> None:
    flat = load_config(None, ["doc_stride=64", "n_best=5", "null_threshold=0.5", "trust_remote_code=true"])
    section = load_config(None, ["qa.doc_stride=64", "qa.n_best=5", "qa.null_threshold=0.5",
                                 "hf.trust_remote_code=true"])
    for cfg in (flat, section):
        assert cfg.task_options == {"doc_stride": 64, "n_best": 5, "max_answer_length": 30, "null_threshold": 0.5,
                                    "version_2": None}
        assert cfg.backend_options == {"trust_remote_code": True}
        assert cfg.doc_stride == 64 and cfg.trust_remote_code is True  # read access by the flat name, too
    data = config_to_dict(flat)
    assert data["qa"]["doc_stride"] == 64 and data["hf"] == {"trust_remote_code": True}
    assert "doc_stride" not in data and "trust_remote_code" not in data
    # the written (sectioned) config loads back to the same config
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path) == flat
    with pytest.raises(ConfigError, match=r"'doc_stride' is given twice, as 'doc_stride' and as 'qa.doc_stride'"):
        config_from_dict({"doc_stride": 32, "qa": {"doc_stride": 64}})
    with pytest.raises(ConfigError, match=r"unknown option 'qa.stride'. Options of 'qa': doc_stride, "):
        config_from_dict({"qa": {"stride": 64}})
    with pytest.raises(ConfigError, match=r"config key 'qa.n_best': 'many' is not a valid int"):
        config_from_dict({"qa": {"n_best": "many"}})
