import hashlib
import json

import pytest

from reagent_recsys.config import ConfigError, describe_schema, load_config, validate_config


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_unknown_key_names_dotted_path_and_suggests(tmp_path):
    path = write(tmp_path, "output_dir: out\ntraining:\n  lerning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"training\.lerning_rate: unknown key \(did you mean learning_rate\?\)"):
        load_config(path)


def test_out_of_range_names_field_value_and_rule(tmp_path):
    path = write(tmp_path, "output_dir: out\nenv:\n  time_budget: 0\n")
    with pytest.raises(ConfigError, match=r"env\.time_budget: Input should be greater than 0 \(got 0\)"):
        load_config(path)


def test_slate_larger_than_candidates_is_rejected():
    with pytest.raises(ConfigError, match=r"env: slate_size \(30\) must be <= num_candidates \(20\)"):
        validate_config({"output_dir": "o", "env": {"slate_size": 30, "num_candidates": 20}})


def test_unknown_preset_lists_allowed():
    with pytest.raises(ConfigError, match=r"env\.preset: Input should be 'recsim', 'strong' or 'sweet_bitter'"):
        validate_config({"output_dir": "o", "env": {"preset": "bitter"}})


def test_mixture_weights_must_sum_to_one_and_tags_are_not_in_path():
    bad = {"output_dir": "o", "logging": {"policy": {"type": "mixture", "components": [
        {"weight": 0.2, "policy": {"type": "greedy", "direction": "up"}},
        {"weight": 0.3, "policy": {"type": "random"}},
    ]}}}
    with pytest.raises(ConfigError) as info:
        validate_config(bad)
    assert "logging.policy.components[0].policy.direction: Input should be 'max' or 'min' (got 'up')" in str(info.value)
    bad["logging"]["policy"]["components"][0]["policy"]["direction"] = "max"
    with pytest.raises(ConfigError, match=r"logging\.policy: component weights must sum to 1, got 0\.5"):
        validate_config(bad)


def test_overrides_are_parsed_as_yaml(tmp_path):
    path = write(tmp_path, "output_dir: out\nenv: {}\n")  # logging needs an env
    config = load_config(path, ["training.epochs=3", "logging.policy={type: greedy, direction: min}"])
    assert config.training.epochs == 3
    assert config.logging.policy.direction == "min"
    with pytest.raises(ConfigError, match="expected dotted.key=value"):
        load_config(path, ["training.epochs"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "output_dir: [unclosed\n"))


def test_every_field_is_described():
    lines = describe_schema()
    undocumented = [line for line in lines if line.rstrip().endswith(":") and "[" not in line.split(":")[0]]
    assert not undocumented, undocumented
    assert any(line.startswith("training.learning_rate (float = 0.001)") for line in lines)


def test_section_hash_is_stable_and_sensitive():
    a = validate_config({"output_dir": "o"})
    b = validate_config({"output_dir": "other", "training": {"epochs": 99}})
    assert a.section_hash("env", "logging") == b.section_hash("env", "logging")
    assert a.section_hash("training") != b.section_hash("training")


def test_section_hash_leaves_out_the_excluded_fields():
    plain = validate_config({"output_dir": "o", "import": {"path": "l.csv", "format": "csv", "step_column": "t"}})
    resumed = validate_config({"output_dir": "o", "training": {"resume": True, "torch_threads": 3},
                               "import": {"path": "l.csv", "format": "csv", "step_column": "t"}})
    operational = {"training": ("resume", "torch_threads")}
    assert plain.section_hash("training") != resumed.section_hash("training")
    assert plain.section_hash("training", exclude=operational) == resumed.section_hash("training", exclude=operational)
    data = resumed.section_data("import", "training", exclude=operational)
    assert list(data) == ["seed", "import", "training"] and data["import"]["path"] == "l.csv"  # named by alias
    assert "resume" not in data["training"] and data["training"]["epochs"] == plain.training.epochs
    assert resumed.section_data("import_")["import_"] == data["import"]  # or by field name
    # the hash of exactly that data: the end_to_end ledger stores both and compares the data field by field
    assert resumed.section_hash("training", exclude=operational) == hashlib.sha256(
        json.dumps(resumed.section_data("training", exclude=operational), sort_keys=True).encode()).hexdigest()[:16]


def test_output_uri_keeps_hadoop_uris_and_local_paths():
    hdfs = validate_config({"output_dir": "hdfs://nn:8020/rl/run1/"})
    assert hdfs.output_uri("timeline") == "hdfs://nn:8020/rl/run1/timeline"
    local = validate_config({"output_dir": "outputs/run"})
    assert local.output_uri("mdp") == "outputs/run/mdp"
    assert str(local.output_dir / "mdp") == "outputs/run/mdp"
    assert local.model_copy(update={"seed": 3}).output_uri("x") == "outputs/run/x"


@pytest.mark.parametrize(("override", "expected"), [
    ("training.epochs=true", r"training\.epochs: expected a number or text, got a boolean .*\(from --set training\.epochs=true\)"),
    ("training.hidden_sizes=[64, false]", r"training\.hidden_sizes\[1\]: expected a number or text, got a boolean"),
    ("output_dir=''", r"output_dir: must not be empty"),
    ("output_dir=", r"output_dir: must not be empty"),
    ("training.learning_rate=.inf", r"training\.learning_rate: must be a finite number \(got inf\)"),
    ("timeline.gamma=.nan", r"timeline\.gamma: must be a finite number"),
    ("training.epoch=3", r"training\.epoch: unknown key \(did you mean epochs\?\) \(from --set training\.epoch=3\)"),
    ("training.epochs=[1", r"--set 'training\.epochs=\[1': the value is not valid YAML"),
    ("env.recsim_plugins=['os; import x']", r"env\.recsim_plugins: 'os; import x' is not a dotted Python module"),
])
def test_strict_values_and_set_errors_name_the_field_and_the_set(tmp_path, override, expected):
    """Issue 12.8: no bool as a number, no empty output_dir, finite floats; --set errors name the --set."""
    path = write(tmp_path, "output_dir: out\nenv: {}\n")
    with pytest.raises(ConfigError, match=expected):
        load_config(path, [override])


def test_booleans_stay_booleans_and_plugins_may_be_dotted(tmp_path):
    path = write(tmp_path, "output_dir: out\nenv: {recsim_plugins: [my_pkg.envs]}\n")
    config = load_config(path, ["training.dueling=false", "training.learning_rate=1e-4", "training.gamma=1"])
    assert config.training.dueling is False and config.training.gamma == 1.0
    assert config.env.recsim_plugins == ["my_pkg.envs"]
