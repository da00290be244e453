import pytest

from flowseg.errors import InputError, one_line, some_names


@pytest.mark.parametrize("exc, expected", [
    (ValueError("bad value\nmore detail"), "ValueError: bad value"),
    (InputError("  a.tif: damaged  "), "InputError: a.tif: damaged"),
    (KeyError("state_dict"), "KeyError: 'state_dict'"),
    (RuntimeError(""), "RuntimeError"),
])
def test_one_line_is_the_type_and_the_first_line(exc, expected):
    assert one_line(exc) == expected


@pytest.mark.parametrize("names, limit, expected", [
    (["a"], 10, "a"), (["a", "b", "c"], 3, "a, b, c"), (["a", "b", "c"], 2, "a, b and 1 more"),
    ([], 2, ""),
])
def test_some_names_lists_the_first_then_counts_the_rest(names, limit, expected):
    assert some_names(iter(names), limit=limit) == expected
