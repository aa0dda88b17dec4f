"""conversion.json and the importance-ranking file: round trips and the errors readers get."""

from __future__ import annotations

import json

import pytest
from transformers import AutoConfig

from conversion import ImportanceRanking, read_importance, read_record, teacher_config_sha256, write_importance
from conversion.importance_file import ImportanceFileError, parse_importance
from conversion.record import ConversionRecord, is_conversion_of, write_record

from .teachers import tiny_teacher


def test_teacher_hash_is_the_same_for_the_live_config_and_the_saved_one(tmp_path):
    teacher = tiny_teacher("llama")
    teacher.save_pretrained(tmp_path / "t")
    assert teacher_config_sha256(teacher.config) == teacher_config_sha256(AutoConfig.from_pretrained(tmp_path / "t"))
    other = tiny_teacher("llama", rms_norm_eps=1e-3)
    assert teacher_config_sha256(other.config) != teacher_config_sha256(teacher.config)


def test_record_round_trips_and_verifies_its_teacher(tmp_path):
    teacher = tiny_teacher("mistral")
    record = ConversionRecord("t", teacher_config_sha256(teacher.config), [1], [1], "mil", "0.1.0", "bfloat16", 0)
    write_record(tmp_path, record)
    assert read_record(tmp_path) == record
    assert is_conversion_of(record, teacher.config)
    assert not is_conversion_of(record, tiny_teacher("qwen2").config)


def test_reading_a_record_that_is_missing_or_foreign_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="was not written by conversion.convert"):
        read_record(tmp_path)
    (tmp_path / "conversion.json").write_text(json.dumps({"teacher": "x"}))
    with pytest.raises(ValueError, match="was it written by another version"):
        read_record(tmp_path)


GOOD = {"method": "loo", "model": "m", "metric": "mmlu_drop", "scores": {"0": 0.5, "1": 0.1}, "ranking": [1, 0]}


def test_importance_file_round_trips(tmp_path):
    ranking = parse_importance(GOOD)
    assert ranking == ImportanceRanking("loo", "m", "mmlu_drop", {0: 0.5, 1: 0.1}, [1, 0])
    write_importance(tmp_path / "r.json", ranking)
    assert read_importance(tmp_path / "r.json") == ranking


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "random"}, "method is 'random'; use one of ('loo', 'mmr')"),
        ({"scores": {"a": 1.0, "1": 0.1}}, "scores key 'a' is not a layer index"),
        ({"scores": {"0": "high", "1": 0.1}}, "scores['0'] is 'high'; scores must be finite numbers"),
        ({"ranking": [1, 1]}, "ranking lists a layer more than once"),
        ({"ranking": [1]}, "ranking and scores must cover the same layers"),
        ({"ranking": "1,0"}, "ranking must be a list of layer indices"),
        ({"model": 3}, "model must be a string"),
    ],
)
def test_malformed_importance_files_are_refused_naming_the_field(change, message):
    with pytest.raises(ImportanceFileError) as error:
        parse_importance({**GOOD, **change})
    assert message in str(error.value)


def test_missing_fields_and_bad_json_are_reported(tmp_path):
    with pytest.raises(ImportanceFileError, match=r"missing field\(s\) \['ranking'\]"):
        parse_importance({key: value for key, value in GOOD.items() if key != "ranking"})
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ImportanceFileError, match="is not valid JSON"):
        read_importance(tmp_path / "bad.json")
