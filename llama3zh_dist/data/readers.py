"""Reading raw rows from local files, streaming: memory does not grow with the file.

``iter_records(path)`` yields ``(line, raw, error)`` for every row of a ``.jsonl``, ``.json`` or
``.parquet`` file: ``line`` is 1-based (JSON arrays and Parquet: the record's index), ``raw`` the
record's JSON text (parsed later, so a bad row becomes a reject, not an exception), ``error`` None, or
for the one record that stands for an unreadable rest of a file, what is wrong with it (byte offset
and the parser's message): a truncated or invalid JSON array keeps every complete record before
the damage and loses nothing silently.

JSON arrays are parsed incrementally with the C scanner of the standard library
(``json.JSONDecoder.raw_decode``) over a sliding buffer of ~1 MiB plus the record being read. Why
not ijson: its errors carry no byte offset and records come back as re-built Python objects, while
here each record's own text is passed on as it is in the file (no re-serialisation) at C speed.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import BinaryIO, Iterator

CHUNK_BYTES = 1 << 20
# a JSON array record larger than this is treated as damage (the buffer would otherwise grow to
# the rest of the file looking for its end)
MAX_RECORD_BYTES = 256 << 20
_WS = re.compile(r"[ \t\n\r]*")
_STRUCTURAL = re.compile(r'[,:\[\]{}"]')
_DECODER = json.JSONDecoder()

Record = tuple  # (line: int, raw: str, error: str | None)


class Progress:
    """Bytes of the file read so far (updated by the readers, for a progress bar's ETA)."""

    def __init__(self):
        self.bytes = 0


def iter_records(path: str, progress: Progress | None = None) -> Iterator[Record]:
    progress = progress or Progress()
    if path.endswith(".parquet"):
        yield from _iter_parquet(path, progress)
        return
    with open(path, "rb") as f:
        if path.endswith(".json"):
            head = f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n")
            f.seek(0)
            if head.startswith(b"["):
                yield from _iter_json_array(f, path, progress)
                return
            lines = _looks_like_json_lines(f)
            f.seek(0)
            if not lines:
                yield from _iter_json_document(f, path, progress)
                return
        yield from _iter_json_lines(f, progress)


def _iter_parquet(path: str, progress: Progress) -> Iterator[Record]:
    import os

    import pyarrow.parquet as pq

    pf = pq.ParquetFile(path)
    line = 0
    size, total = os.path.getsize(path), max(pf.metadata.num_rows, 1)
    for batch in pf.iter_batches(batch_size=4096):
        progress.bytes = size * (line + batch.num_rows) // total
        for row in batch.to_pylist():
            line += 1
            yield line, json.dumps(row, ensure_ascii=False, default=str), None


def _iter_json_lines(f: BinaryIO, progress: Progress) -> Iterator[Record]:
    """JSONL rows are the lines as written; blank lines are not rows."""
    for i, raw in enumerate(f, 1):
        progress.bytes += len(raw)
        s = raw.decode("utf-8", errors="replace").strip()
        if s:
            yield i, s, None


def _looks_like_json_lines(f: BinaryIO) -> bool:
    """A .json file of one JSON object per line (its first two non-blank lines are objects)."""
    seen = 0
    for raw in f:
        s = raw.strip()
        if not s:
            continue
        try:
            if not isinstance(json.loads(s), dict):
                return False
        except ValueError:
            return False
        seen += 1
        if seen == 2:
            return True
    return False


def _iter_json_document(f: BinaryIO, path: str, progress: Progress) -> Iterator[Record]:
    """One JSON value (an object, possibly wrapping the list of rows: ``{"data": [...]}``), read whole
    (such files are small in practice; the big dumps are arrays or JSON lines)."""
    data = f.read()
    progress.bytes = len(data)
    text = data.decode("utf-8", errors="replace")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        off = len(text[: e.pos].encode("utf-8"))
        yield 1, text[e.pos : e.pos + 8192], f"{_name(path)} is not valid JSON at byte {off:,}: {e.msg}; no record read"
        return
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        obj = lists[0] if len(lists) == 1 and len(obj) <= 2 else [obj]
    if not isinstance(obj, list):
        obj = [obj]
    for i, row in enumerate(obj, 1):
        yield i, json.dumps(row, ensure_ascii=False), None


def _name(path: str) -> str:
    import os

    return os.path.basename(path)


class _Buffer:
    """Decoded text of a binary file, read forward in chunks; ``base`` = byte offset of ``text[0]``."""

    def __init__(self, f: BinaryIO, progress: Progress):
        self.f = f
        self.progress = progress
        self.dec = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.base = 0
        self.eof = False

    def more(self, keep_from: int, nbytes: int = CHUNK_BYTES) -> int:
        """Drop text before ``keep_from``, read ``nbytes`` more; returns the new index of ``keep_from``."""
        if keep_from:
            self.base += len(self.text[:keep_from].encode("utf-8"))
            self.text = self.text[keep_from:]
        data = self.f.read(nbytes)
        self.progress.bytes += len(data)
        if not data:
            self.eof = True
            self.text += self.dec.decode(b"", final=True)
        else:
            self.text += self.dec.decode(data)
        return 0

    def offset(self, pos: int) -> int:
        return self.base + len(self.text[:pos].encode("utf-8"))

    def skip_ws(self, pos: int) -> int:
        """Position of the next non-whitespace character (reading more as needed; len(text) at EOF)."""
        while True:
            pos = _WS.match(self.text, pos).end()
            if pos < len(self.text) or self.eof:
                return pos
            pos = self.more(pos)


def _iter_json_array(f: BinaryIO, path: str, progress: Progress) -> Iterator[Record]:
    buf = _Buffer(f, progress)
    pos = buf.skip_ws(0)
    if buf.text.startswith("\ufeff", pos):
        pos = buf.skip_ws(pos + 1)
    pos += 1  # the "[" (iter_records checked it)
    n = 0
    expect_value = True  # after "[" or ",": a record (or, right after "[", the closing "]")
    while True:
        pos = buf.skip_ws(pos)
        if pos >= len(buf.text):
            yield n + 1, "", _damage(path, buf.offset(pos), n, "the file ends before the array is closed with ']'", True)
            return
        c = buf.text[pos]
        if not expect_value or (n == 0 and c == "]"):
            if c == "]":
                end = buf.skip_ws(pos + 1)
                if end < len(buf.text):
                    yield n + 1, buf.text[end : end + 8192], _damage(path, buf.offset(end), n, "extra data after the array", False)
                return
            if c != ",":
                yield n + 1, buf.text[pos : pos + 8192], _damage(path, buf.offset(pos), n, "expecting ',' or ']' between records", False)
                return
            pos, expect_value = pos + 1, True
            continue
        try:
            _, end = _DECODER.raw_decode(buf.text, pos)
            if end == len(buf.text) and not buf.eof:  # a number may go on in the next chunk
                raise json.JSONDecodeError("record reaches the end of the buffer", buf.text, end)
        except json.JSONDecodeError as e:
            if not buf.eof and len(buf.text) - pos < MAX_RECORD_BYTES:
                pos = buf.more(pos, max(CHUNK_BYTES, len(buf.text) - pos))  # grow geometrically
                continue
            # truncated: the parser failed in the last token of the file (nothing structural follows)
            cut = buf.eof and (e.msg.startswith("Unterminated string") or not _STRUCTURAL.search(buf.text, e.pos))
            msg = f"{e.msg} (at byte {buf.offset(e.pos):,})"
            yield n + 1, buf.text[pos : pos + 8192], _damage(path, buf.offset(pos), n, msg, cut)
            return
        n += 1
        yield n, buf.text[pos:end], None
        pos, expect_value = end, False


def _damage(path: str, offset: int, complete: int, msg: str, truncated: bool) -> str:
    what = "truncated JSON array" if truncated else "invalid JSON array"
    return (
        f"{_name(path)} is a {what}: {complete:,} complete records read; the rest from byte {offset:,} "
        f"is not readable ({msg})"
    )
