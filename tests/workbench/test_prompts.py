"""Prompt files: the formats accepted, a size limit checked while streaming, and one clear error
(file, line, what was expected) for every misread the issue found (issue 19, items 6 and 7)."""

from __future__ import annotations

import codecs
import json
import os
import threading
import tracemalloc

import pytest

import workbench as wb
from workbench.prompts import load_prompts, read_jsonl


def _write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_accepted_formats(tmp_path):
    rows = [{"prompt": "one two", "answer": " x"}, {"prompt": "three"}]
    jsonl = _write(tmp_path, "p.jsonl", ("\n".join(json.dumps(r) for r in rows) + "\n\n").encode())
    assert load_prompts(jsonl) == ["one two", "three"]
    assert load_prompts(_write(tmp_path, "a.json", b'["one two", {"prompt": "three"}]')) == ["one two", "three"]
    assert read_jsonl(_write(tmp_path, "r.json", json.dumps(rows).encode()))[0]["answer"] == " x"
    # a UTF-8 byte-order mark and Windows line ends are read as the text they stand for
    text = _write(tmp_path, "p.txt", codecs.BOM_UTF8 + "café au lait\r\n\r\n  spaced  \r\nlast".encode())
    assert load_prompts(text) == ["café au lait", "  spaced  ", "last"]
    assert load_prompts(_write(tmp_path, "u.txt", "naïve ünïcode ✓\n".encode())) == ["naïve ünïcode ✓"]


def test_a_huge_file_is_refused_before_it_is_read(tmp_path):
    big = tmp_path / "big.txt"
    with open(big, "wb") as handle:
        handle.truncate(2**30)  # 1 GiB (sparse): before, read whole into memory (> 6 GB)
    with pytest.raises(wb.WorkbenchError, match=r"prompt file '.*big.txt' is larger than the limit of 64 MiB "
                                                r"\(it has 1024.0 MiB\): split it"):
        load_prompts(big)


@pytest.mark.parametrize("line", [b"x" * 999 + b"\n", b"y" * 10_000_000])  # many lines; one line, no newline
def test_a_stream_past_the_limit_stops_with_bounded_memory(tmp_path, line):
    fifo = tmp_path / "prompts.txt"
    os.mkfifo(fifo)  # a stream: no size to check first

    def feed():
        try:
            with open(fifo, "wb") as handle:
                for _ in range(40_000_000 // len(line) + 1):
                    handle.write(line)
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    tracemalloc.start()
    try:
        with pytest.raises(wb.WorkbenchError, match=r"larger than the limit of 1 MiB \(passed at line \d+\)"):
            load_prompts(fifo, max_bytes=2**20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    writer.join(timeout=30)
    assert peak < 8 * 2**20  # the budget, not the 40 MB offered


@pytest.mark.parametrize("name, data, message", [
    ("latin1.txt", "first\ncafé\n".encode("latin-1"),
     r"latin1.txt line 2 is not UTF-8: byte 0xe9 at column 4 \(invalid continuation byte\); the file may be "
     r"Latin-1 or Windows-1252: save it as UTF-8"),
    ("cp1252.jsonl", '{"prompt": "“quoted”"}\n'.encode("cp1252"), r"cp1252.jsonl line 1 is not UTF-8: byte 0x93"),
    ("utf16.txt", "hello\nworld\n".encode("utf-16"), r"is UTF-16 \(it starts with a UTF-16 byte-order mark\): "
                                                     r"save it as UTF-8"),
    ("utf16le.txt", "hello\n".encode("utf-16-le"), r"utf16le.txt line 1 holds NUL bytes \(column 2\): the file "
                                                   r"looks like UTF-16 or binary"),
    ("utf32.jsonl", '{"prompt": "x"}\n'.encode("utf-32"), r"is UTF-32"),
])
def test_encodings_other_than_utf8_name_the_problem_and_the_line(tmp_path, name, data, message):
    with pytest.raises(wb.WorkbenchError, match=message):  # before: UnicodeDecodeError tracebacks
        load_prompts(_write(tmp_path, name, data))


@pytest.mark.parametrize("name, text, message", [
    ("null.jsonl", '{"prompt": "ok"}\n{"prompt": null}\n', r"null.jsonl line 2: field 'prompt' is null: expected a string"),
    ("list.jsonl", '{"prompt": ["a", "b"]}\n', r"list.jsonl line 1: field 'prompt' is a list \(\[\"a\", \"b\"\]\): "
                                               r"expected a string"),
    ("number.jsonl", '\n\n{"prompt": 12}\n', r"number.jsonl line 3: field 'prompt' is a number \(12\)"),
    ("bool.jsonl", '{"prompt": true}\n', r"field 'prompt' is a boolean"),
    ("empty.jsonl", '{"prompt": "  "}\n', r"empty.jsonl line 1: field 'prompt' is empty: expected non-empty text"),
    ("row.jsonl", '["a"]\n', r"row.jsonl line 1 is a list: expected a JSON object with field\(s\) \['prompt'\]"),
    ("bad.jsonl", '{"prompt": "a"\n', r"bad.jsonl line 1 is not JSON"),
    ("none.jsonl", "\n \n", r"holds no prompts"),
    ("object.json", '{"prompt": "a"}', r"object.json holds an object: expected a JSON array of strings or of "
                                       r"objects with 'prompt' \(one object a line: name the file .jsonl\)"),
    ("items.json", '["a", null]', r"items.json item 1 is null: expected a string or an object with a 'prompt' string"),
    ("nested.json", '["a", {"prompt": ["x"]}]', r"nested.json item 1: field 'prompt' is a list"),
    ("blank.json", '["a", ""]', r"blank.json item 1 is an empty string"),
    ("syntax.json", '[\n"a",\n]', r"syntax.json line 3 is not JSON"),
    ("empty.json", "[]", r"holds no prompts"),
])
def test_prompts_that_are_not_text_are_refused_with_their_line(tmp_path, name, text, message):
    with pytest.raises(wb.WorkbenchError, match=message):  # before: analysed as "None", a list's repr, or text
        load_prompts(_write(tmp_path, name, text.encode()))


def test_suite_fields_must_be_text_too(tmp_path):
    task = _write(tmp_path, "task.jsonl", b'{"prompt": "a b", "answer": 5}\n')
    with pytest.raises(wb.WorkbenchError, match=r"task.jsonl line 1: field 'answer' is a number \(5\): expected a string"):
        read_jsonl(task, ("prompt", "answer"))
    with pytest.raises(wb.WorkbenchError, match=r"line 1 lacks field\(s\) \['corrupted_prompt'\]"):
        read_jsonl(task, ("prompt", "corrupted_prompt"))


def test_paths_that_are_not_prompt_files(tmp_path):
    with pytest.raises(wb.WorkbenchError, match="prompt file '.*nope.txt' does not exist"):
        load_prompts(tmp_path / "nope.txt")
    with pytest.raises(wb.WorkbenchError, match="is a directory: expected a .jsonl, .json or .txt file"):
        load_prompts(tmp_path)
    with pytest.raises(wb.WorkbenchError, match="prompt file must be a path; got list"):
        load_prompts(["a prompt"])
    with pytest.raises(wb.WorkbenchError, match="max_bytes must be a positive int; got 0"):
        load_prompts(_write(tmp_path, "p.txt", b"a\n"), max_bytes=0)


def test_analyze_records_the_prompt_file(tiny, tmp_path):
    model, _ = tiny
    path = _write(tmp_path, "p.json", b'["w1 w2 w3", "w4 w5"]')
    run = wb.analyze(model, path, out=tmp_path / "r", analyses="head_summary", progress=False)
    assert run.manifest["prompts_source"] == str(path.resolve()) and run.manifest["n_prompts"] == 2
    assert run.restore_command(["sink_scores"]).startswith("wb.analyze(model, prompts")  # an in-memory model
