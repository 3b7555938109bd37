"""Reading one file: what used to crash the parser or mislead the user is an IngestError that
names the problem (nesting depth, a ragged first row, a JSON scalar), and Windows-1252 text is
read as Windows-1252."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.ingest.errors import IngestError
from app.ingest.reader import read_table
from app.jsondepth import MAX_JSON_DEPTH


def _file(tmp_path: Path, name: str, content: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize(("name", "content", "where"), [
    # 6 KB nested 3,000 deep: Python's parser raised RecursionError (a 500).
    ("deep.json", b"[" * 3000 + b"]" * 3000, "'deep.json'"),
    ("deep.jsonl", b'{"text": ' + b"[" * 50_000 + b"]" * 50_000 + b', "label": "a"}\n',
     "line 1 of 'deep.jsonl'"),
    # Past the bound but within what the parser survives: the bound, not the parser, decides.
    ("deep_record.json", b'[{"text": "t", "label": ' + b"[" * 80 + b"]" * 80 + b"}]", "'deep_record.json'"),
    ("deep_later.jsonl", b'{"text": "a", "label": "x"}\n' * 3 + b'{"text": ' + b'{"a": ' * 70 + b"1"
     + b"}" * 70 + b', "label": "y"}\n', "line 4 of 'deep_later.jsonl'"),
])
def test_json_nested_past_the_bound_names_the_bound(tmp_path: Path, name: str, content: bytes,
                                                   where: str) -> None:
    with pytest.raises(IngestError) as caught:
        read_table(_file(tmp_path, name, content), name)
    assert str(caught.value).startswith(where), caught.value
    assert f"more than {MAX_JSON_DEPTH} levels deep; the limit is {MAX_JSON_DEPTH}" in str(caught.value)


def test_chat_turns_nest_well_within_the_bound(tmp_path: Path) -> None:
    line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    table = read_table(_file(tmp_path, "chat.jsonl", line * 3), "chat.jsonl")
    assert len(table.frame) == 3


@pytest.mark.parametrize(("content", "kind"), [
    (b"42", "number"), (b'"just a string"\n', "string"), (b"true", "boolean"), (b"null", "null"),
    (b"  3.5e2  \n", "number"),
])
def test_a_json_scalar_is_named_as_such_not_a_missing_header(tmp_path: Path, content: bytes,
                                                              kind: str) -> None:
    with pytest.raises(IngestError) as caught:
        read_table(_file(tmp_path, "data.json", content), "data.json")
    message = str(caught.value)
    assert f"'data.json' is a single JSON {kind}, not a table" in message
    assert "header" not in message


def test_a_csv_that_starts_with_a_number_or_a_quote_is_still_csv(tmp_path: Path) -> None:
    numbers = read_table(_file(tmp_path, "n.csv", b"1,2\n3,4\n"), "n.csv")
    assert numbers.format == "csv" and list(numbers.frame.columns) == ["1", "2"]
    quoted = read_table(_file(tmp_path, "q.csv", b'"text","label"\n"a","b"\n'), "q.csv")
    assert list(quoted.frame.columns) == ["text", "label"]


@pytest.mark.parametrize(("name", "content", "line", "fields", "header"), [
    # pandas took the extra field of the first row as a row index, shifting every column.
    ("ragged.tsv", b"text\tlabel\n" + b"a\tb\tc\n" + b"x\ty\n" * 5, 2, 3, 2),
    ("ragged.csv", b"text,label\n" + b'"a, quoted",b,c,d\n' + b"x,y\n" * 5, 2, 4, 2),
])
def test_a_ragged_first_row_names_its_line_and_field_counts(tmp_path: Path, name: str, content: bytes,
                                                            line: int, fields: int, header: int) -> None:
    with pytest.raises(IngestError) as caught:
        read_table(_file(tmp_path, name, content), name)
    assert f"line {line} has {fields} fields but the header has {header}" in str(caught.value)


def test_a_short_first_row_is_still_read_with_empty_cells(tmp_path: Path) -> None:
    table = read_table(_file(tmp_path, "short.csv", b"text,label\nonly text\nx,y\n"), "short.csv")
    assert table.frame["label"].tolist() == ["", "y"]


WESTERN = [
    "\u201cquoted\u201d caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u2014 {i}",  # charset-normalizer said cp1250
    "Gr\u00f6\u00dfe \u00dcbung sch\u00f6n {i}",  # ... and mac_iceland
    "Le gar\u00e7on a mang\u00e9 une pi\u00e8ce de g\u00e2teau {i}",
]


@pytest.mark.parametrize("sentence", WESTERN)
def test_windows_1252_text_is_read_as_windows_1252(tmp_path: Path, sentence: str) -> None:
    text = "text,label\n" + "".join(f"{sentence.format(i=i)},{'ab'[i % 2]}\n" for i in range(30))
    table = read_table(_file(tmp_path, "w.csv", text.encode("cp1252")), "w.csv")
    assert table.encoding == "cp1252"
    assert table.frame["text"].tolist()[0] == sentence.format(i=0)  # every character as written
    assert any("read as cp1252" in w and "Check the preview" in w for w in table.warnings)


def test_central_european_text_keeps_its_own_codepage(tmp_path: Path) -> None:
    """The tie goes to Windows-1252 only where it reads as cleanly: Hungarian in cp1250 does not
    (its \u0151 and \u0171 are bytes that Windows-1252 reads as other letters)."""
    sentence = "\u00c1rv\u00edzt\u0171r\u0151 t\u00fck\u00f6rf\u00far\u00f3g\u00e9p \u00e9s \u0151 sz\u00e9p"
    text = "text,label\n" + "".join(f"{sentence} {i},{'ab'[i % 2]}\n" for i in range(30))
    table = read_table(_file(tmp_path, "cz.csv", text.encode("cp1250")), "cz.csv")
    assert table.encoding == "cp1250"
    assert table.frame["text"].tolist()[0] == f"{sentence} 0"
