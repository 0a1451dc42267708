"""Submission loading: metadata schema, entrypoint errors, content hash."""
from __future__ import annotations

import pytest

from vqbench.schema import ConfigError
from vqbench.submissions import get_submission, list_submissions, load_submission


def test_fixtures_and_baselines_load(project):
    assert "minimal" in list_submissions()
    sub = get_submission("minimal")
    assert sub.quantizer_class().__name__ == "MinimalVQ" and len(sub.hash) == 16


@pytest.mark.parametrize("edit, field, words", [
    (lambda y: y + "homepage: x\n", "homepage", ["unknown key"]),
    (lambda y: y.replace("display_name:", "displayname:"), "displayname", ["did you mean 'display_name'"]),
    (lambda y: y.replace("entrypoint: quantizer:MinimalVQ", "entrypoint: quantizer"), "entrypoint", ["module:Class"]),
    (lambda y: y.replace("quantizer:MinimalVQ", "quantizer:MinimalVq"), "entrypoint", ["no class 'MinimalVq'", "did you mean 'MinimalVQ'"]),
    (lambda y: y.replace("quantizer:MinimalVQ", "nosuchmodule:X"), "entrypoint", ["importing 'nosuchmodule' failed"]),
    (lambda y: y.replace("name: minimal", "name: other"), "name", ["differs from its folder name"]),
    (lambda y: y.replace("params: {}", "params: {beta: 1}"), "params", ["unexpected keyword argument 'beta'"]),
    (lambda y: y.replace("params: {}", "params: {}\nrequires: [surely_not_installed_pkg]"), "requires", ["not installed"]),
])
def test_submission_errors_name_file_field_and_fix(project, edit, field, words):
    path = project / "submissions" / "minimal" / "submission.yaml"
    path.write_text(edit(path.read_text()))
    with pytest.raises(ConfigError) as info:
        get_submission("minimal").build(4, 16)
    assert info.value.field == field and info.value.path == path, str(info.value)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_import_error_in_code_is_reported(project):
    (project / "submissions" / "minimal" / "quantizer.py").write_text("import numpy\nraise ValueError('boom')\n")
    with pytest.raises(ConfigError, match="importing 'quantizer' failed: ValueError: boom"):
        get_submission("minimal").quantizer_class()


def test_not_a_quantizer_subclass(project):
    (project / "submissions" / "minimal" / "quantizer.py").write_text("class MinimalVQ:\n    pass\n")
    with pytest.raises(ConfigError, match="not a subclass of vqbench.Quantizer"):
        get_submission("minimal").quantizer_class()


def test_unknown_submission_suggests(project):
    with pytest.raises(ConfigError, match="did you mean 'minimal'"):
        get_submission("minimla")


def test_hash_changes_with_code_not_with_caches(project):
    folder = project / "submissions" / "minimal"
    before = load_submission(folder).hash
    (folder / "__pycache__").mkdir(exist_ok=True)
    (folder / "__pycache__" / "x.pyc").write_bytes(b"junk")
    assert load_submission(folder).hash == before
    (folder / "quantizer.py").write_text((folder / "quantizer.py").read_text() + "\n# edited\n")
    assert load_submission(folder).hash != before


def test_a_submission_split_over_files_imports_as_a_package(project):
    sub = get_submission("two_files")
    cls = sub.quantizer_class()
    assert cls.__name__ == "TwoFileVQ" and cls.__module__.endswith(".quantizer")
    assert type(sub.build(4, 16).book).__module__ == cls.__module__.rsplit(".", 1)[0] + ".layers"


def test_two_submissions_with_the_same_module_names_do_not_collide(project):
    a, b = get_submission("minimal").quantizer_class(), get_submission("two_files").quantizer_class()
    assert a.__module__ != b.__module__ and a.__name__ == "MinimalVQ" and b.__name__ == "TwoFileVQ"
