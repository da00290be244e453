import pytest

from flowseg.errors import InputError
from flowseg.io.csvfile import open_csv


def _write(tmp_path, data: bytes):
    path = tmp_path / "t.csv"
    path.write_bytes(data)
    return path


def test_header_rows_and_line_numbers(tmp_path):
    path = _write(tmp_path, "\ufeffa, b\r\n1,2\r\n\r\n\"x\ny\",3\n4\n".encode())
    with open_csv(path, "table") as reader:
        assert reader.header == ["a", "b"]          # BOM dropped, names stripped
        rows = [(reader.line_num, row) for row in reader]
    assert rows == [(2, ["1", "2"]), (5, ["x\ny", "3"]), (6, ["4"])]  # blank line skipped
    with open_csv(path) as reader:
        assert list(reader.records()) == [{"a": "1", "b": "2"}, {"a": "x\ny", "b": "3"},
                                          {"a": "4", "b": ""}]


def test_empty_file_has_no_header(tmp_path):
    with open_csv(_write(tmp_path, b"")) as reader:
        assert reader.header == [] and list(reader) == []


@pytest.mark.parametrize("data, line", [
    ("name,x\n\u00e9,1\n".encode("latin-1"), 2),
    ("\u00e9,x\n".encode("cp1252"), 1),
    (b"a\n" * 5000 + b"\xff\n", 5001),               # past the first read buffer: exact line
])
def test_non_utf8_names_file_and_exact_line(tmp_path, data, line):
    path = _write(tmp_path, data)
    with pytest.raises(InputError, match=rf"table .*t.csv line {line}: not UTF-8 text"):
        with open_csv(path, "table") as reader:
            list(reader)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match=r"cannot read table .*nope.csv: No such file"):
        with open_csv(tmp_path / "nope.csv", "table"):
            pass
    with pytest.raises(InputError, match="cannot read"):
        with open_csv(tmp_path):
            pass
