import pytest

from flowseg.errors import InputError, one_line


@pytest.mark.parametrize("exc, expected", [
    (ValueError("bad value\nmore detail"), "ValueError: bad value"),
    (InputError("  a.tif: damaged  "), "InputError: a.tif: damaged"),
    (KeyError("state_dict"), "KeyError: 'state_dict'"),
    (RuntimeError(""), "RuntimeError"),
])
def test_one_line_is_the_type_and_the_first_line(exc, expected):
    assert one_line(exc) == expected
