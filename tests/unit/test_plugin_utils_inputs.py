"""plugins/plugin_utils/inputs.py: the one input check behind the <role>_input_errors filters."""
import pytest

from ansible_collections.p3.recovery.plugins.plugin_utils.inputs import fmt, input_errors, number, number_error, one_of


@pytest.mark.parametrize("raw,want", [(5, 5.0), ("2.5", 2.5), (True, None), ("nan", None), ("inf", None), (None, None),
                                      ("lots", None)])
def test_number(raw, want):
    assert number(raw) == want


def test_fmt_quotes_strings_only():
    assert (fmt(5), fmt(2.5), fmt("5"), fmt("lots"), fmt(None), fmt(True)) == ("5", "2.5", "5", "'lots'", "None", "True")


def test_one_of():
    assert (one_of(["a"]), one_of(["a", "b"]), one_of(["a", "b", "c"])) == ("a", "a or b", "a, b or c")


@pytest.mark.parametrize("args,want", [
    (("x", 0, "integer", 1, True, None), "x must be an integer >= 1, got 0"),
    (("x", 1.5, "integer", 0, True, None), "x must be an integer >= 0, got 1.5"),
    (("x", 0, "number", 0, False, 100), "x must be a number > 0 and <= 100, got 0"),
    (("x", 101, "number", 0, False, 100), "x must be a number > 0 and <= 100, got 101"),
    (("x", "a", "number", None, True, None), "x must be a number, got 'a'"),
    (("x", "3", "integer", 1, True, None), None),
    (("x", 100, "number", 0, False, 100), None),
])
def test_number_error(args, want):
    assert number_error(*args) == want


def test_input_errors_checks_only_present_names_numbers_first():
    rules = [("a", "integer", 0, True, None), ("b", "number", 0, True, None)]
    assert input_errors({"b": -1, "c": "x"}, rules, [("c", ["y", "z"])]) == [
        "b must be a number >= 0, got -1", "c must be y or z, got 'x'"]
    assert input_errors({}, rules, [("c", ["y"])]) == []
