"""The method registry: the runner asks a method object, so a new method is one registration."""

from __future__ import annotations

import pytest

from promptintern.harness.experiment import Experiment
from promptintern.methods import registry as methods
from promptintern.methods.registry import METHODS, Fixed, Method, get_method, method_names, register_method
from promptintern.profile import load_profile


@pytest.fixture()
def registry(monkeypatch):
    """A copy of the registry that the test may extend."""
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    return methods._REGISTRY


def test_builtins_are_registered_in_table_order():
    assert METHODS[:4] == ("promptintern", "zero-shot", "zero-shot-full", "prefix-cached")
    assert METHODS[-1] == "gist" and set(METHODS) == set(method_names())
    assert all(isinstance(get_method(m), Method) and get_method(m).name == m for m in METHODS)
    assert not get_method("zero-shot").trains and get_method("ft-full").trains
    assert get_method("longllmlingua").question_aware and get_method("gist").mergeable
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        get_method("magic")


def test_a_new_method_is_one_registration(registry, tiny_model_dir):
    register_method(Fixed("ft-half-template", 0.5, 0.0, description="half the template, no examples"))
    with pytest.raises(ValueError, match="already registered"):
        register_method(Fixed("ft-half-template", 0.4, 0.0))
    smoke = load_profile("smoke")
    exp = Experiment("nl2bash", "ft-half-template", smoke, model=str(tiny_model_dir))
    assert [(p.tau, p.shots) for p in exp.plans] == [(0.5, 0)] * 3
    assert exp.key != Experiment("nl2bash", "ft-template", smoke, model=str(tiny_model_dir)).key
    result = exp.evaluate(progress=False)
    assert result["method"] == "ft-half-template" and result["template"]["rate_requested"] == 0.5
    from promptintern.harness.tables import RowSpec

    assert RowSpec(label="x", method="ft-half-template").method == "ft-half-template"


def test_runner_has_no_method_name_branches():
    import inspect

    import promptintern.harness.experiment as run

    source = inspect.getsource(run)
    assert "self.method ==" not in source and "self.method !=" not in source and "self.method in" not in source


def test_installed_plugins_register_methods_by_entry_point(registry, monkeypatch):
    """A package installed with a ``promptintern.methods.registry`` entry point adds its method; no core file changes."""
    from importlib import metadata

    class EntryPoint:
        name, value = "ft-quarter", "plugin:METHOD"

        def load(self):
            return Fixed("ft-quarter", 0.25, 0.0, description="a plug-in")

    monkeypatch.setattr(methods, "_PLUGINS", [])
    monkeypatch.setattr(metadata, "entry_points", lambda group: [EntryPoint()] if group == methods.ENTRY_POINT_GROUP else [])
    assert get_method("ft-quarter").tau == 0.25 and "ft-quarter" in method_names()
