"""Every bad input of tests/bad_input_cases.py, group by group, through the CLI in this process: exit 2 with one
``error:`` line naming the key, flag or file, and the working folder left exactly as the case built it (or, for
the cases that must work, exit 0 with the right result). benchmarks/bad_inputs.py runs the same cases in fresh
processes and counts them."""

from __future__ import annotations

import numpy as np
import pytest

from .bad_input_cases import CASES, judge, snapshot


def _group(name: str) -> list:
    return [pytest.param(c, id=c.name) for c in CASES if c.group == name]


def _handled(case, tmp_path, cli, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # `--out ""` would write here
    args = case.build(tmp_path)
    for key, value in (case.env(tmp_path) if case.env else {}).items():
        monkeypatch.setenv(key, value)
    if case.then is not None:
        cli(*args)
        case.then(tmp_path)
    before = snapshot(tmp_path)
    code, _, err = cli(*args)
    problem = judge(case, code, err, before, snapshot(tmp_path), tmp_path)
    assert problem is None, problem


@pytest.mark.parametrize("case", _group("recipe"))
def test_recipe_yaml_and_pass_parameters(case, tmp_path, cli, monkeypatch):
    _handled(case, tmp_path, cli, monkeypatch)


@pytest.mark.parametrize("case", _group("data"))
def test_data_npz_images_and_tar(case, tmp_path, cli, monkeypatch):
    _handled(case, tmp_path, cli, monkeypatch)


@pytest.mark.parametrize("case", _group("paths"))
def test_paths(case, tmp_path, cli, monkeypatch):
    _handled(case, tmp_path, cli, monkeypatch)


@pytest.mark.parametrize("case", _group("model"))
def test_model_loading_and_stage_files(case, tmp_path, cli, monkeypatch):
    _handled(case, tmp_path, cli, monkeypatch)


@pytest.mark.parametrize("case", _group("bench"))
def test_cli_bench(case, tmp_path, cli, monkeypatch):
    _handled(case, tmp_path, cli, monkeypatch)


@pytest.mark.parametrize("case", _group("check"))
def test_cli_check(case, tmp_path, cli, monkeypatch):
    _handled(case, tmp_path, cli, monkeypatch)


@pytest.mark.parametrize("case", _group("cache"))
def test_data_cache(case, tmp_path, cli, monkeypatch):
    _handled(case, tmp_path, cli, monkeypatch)


def test_every_case_is_in_a_tested_group():
    assert {c.group for c in CASES} == {"recipe", "data", "paths", "model", "bench", "check", "cache"}
    assert len({c.id for c in CASES}) == len(CASES)


def test_quiet_hides_the_decoding_bar(tmp_path, cli, monkeypatch):
    """--quiet reaches the data decoder: a run that decodes images and then fails prints the error line only."""
    from .bad_input_cases import _compress, _folder

    monkeypatch.setattr("compressor.core.data.PROGRESS_MIN", 1)
    data = str(_folder(tmp_path / "ds", classes=9))  # decodes, then fails the class-count check
    code, _, err = cli(*_compress(tmp_path, data=data))
    assert code == 2 and err.strip().count("\n") == 0 and "9 classes" in err, err
    code, _, err = cli(*[a for a in _compress(tmp_path, data=str(_folder(tmp_path / "ds2", classes=9))) if a != "--quiet"])
    assert code == 2 and "decode train" in err, err


def test_valid_inputs_at_the_edges_are_accepted(tmp_path):
    """What the checks must not refuse: whole-number float labels, an npz without names, YAML merge keys."""
    from compressor.core.data import check_against_model, load_dataset
    from compressor.pipeline.recipe import load_yaml

    from .bad_input_cases import _npz

    ds = load_dataset(_npz(tmp_path, train_labels=(np.arange(40) % 10).astype(np.float32)))
    assert ds.train.labels.dtype == np.int64 and ds.train.labels.max() == 9
    check_against_model(ds, 10, (3, 32, 32))
    only_five = load_dataset(_npz(tmp_path, "five.npz", test_labels=np.arange(20) % 5))
    check_against_model(only_five, 10, (3, 32, 32))  # a test split may lack some classes
    assert load_yaml("base: &b {x: 1, y: 2}\nuse: {<<: *b, y: 3}\n")["use"] == {"x": 1, "y": 3}
