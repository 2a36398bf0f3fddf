"""A group of observations as PostgreSQL binary COPY data, built with numpy for the whole group.

The binary COPY format (PostgreSQL documentation, "COPY", "Binary Format"): a fixed header, then
per row a 16-bit field count and per field a 32-bit length (-1 for NULL) and that many bytes
(float8 as a big-endian IEEE double, text as its UTF-8 bytes), then a 16-bit -1; integers are
big-endian. asyncpg's `copy_records_to_table` encodes one value at a time in compiled code,
about 2 µs per observation here. This builds the same bytes from the rows' columns (`Rows`,
shared with the check stages) with whole-array writes.

The columns go in an order chosen per group: first those of one length in every row (a float
column NULL in no row or in every row, a text column whose values are all as long: each then
sits at the same offset in every row and is written as one 2-D slice), then the others, whose
place in a row depends on what came before. Rows are laid out left-aligned in a 2-D array as
wide as the longest row; the fields of the second kind are written at per-row offsets; one
boolean compress then drops the padding (none when every field was of the first kind). Text:
`uav` is ASCII (API.md section 1) and is joined in one piece; `status` and `source` have few
distinct values, each encoded once.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from lowalt.models import OBSERVATION_COLUMNS, Observation, Rows, floats_of, values_of
from lowalt.runs import spans

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]

HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
TRAILER = struct.pack("!h", -1)
_TEXT = ("uav", "status", "source")
_FLOATS = tuple(name for name in OBSERVATION_COLUMNS if name not in _TEXT)
_COUNT = np.frombuffer(struct.pack("!h", len(OBSERVATION_COLUMNS)), np.uint8)


def _text(values: tuple[str | None, ...]) -> tuple[I64, U8]:
    """Per row the UTF-8 length (-1: NULL), and all rows' bytes end to end."""
    n = len(values)
    distinct = dict.fromkeys(values)
    if len(distinct) * 4 < n:  # few distinct values: each encoded once
        encoded = [b"" if v is None else v.encode() for v in distinct]
        code = dict(zip(distinct, range(len(distinct)), strict=True))
        codes = np.fromiter(map(code.__getitem__, values), np.int64, n)
        size = np.array([len(e) for e in encoded], np.int64)
        null = np.array([v is None for v in distinct], np.bool_)
        lengths = np.where(null[codes], -1, size[codes])
        if (size == size[0]).all():  # of one length: a 2-D gather
            table = np.frombuffer(b"".join(encoded), np.uint8).reshape(len(encoded), -1)
            return lengths, table[codes].reshape(-1)
        pool = np.frombuffer(b"".join(encoded), np.uint8)
        return lengths, pool[spans((np.cumsum(size) - size)[codes], size[codes])]
    pieces = [b"" if v is None else v.encode() for v in values] if None in distinct else None
    if pieces is None:
        text = "".join(values)  # type: ignore[arg-type]  # no None among them
        joined = text.encode()
        if len(joined) == len(text):  # ASCII, one byte per character (every uav)
            return (np.fromiter(map(len, values), np.int64, n),  # type: ignore[arg-type]
                    np.frombuffer(joined, np.uint8))
        pieces = [v.encode() for v in values]  # type: ignore[union-attr]
    lengths = np.fromiter(map(len, pieces), np.int64, n)
    if None in distinct:
        lengths[[k for k, v in enumerate(values) if v is None]] = -1
    return lengths, np.frombuffer(b"".join(pieces), np.uint8)


def copy_data(rows: Sequence[Observation]) -> tuple[list[str], memoryview]:
    """rows as binary COPY data: the columns in the order written, and the data (a buffer:
    asyncpg takes `bytes` for a file name)."""
    n = len(rows)
    if type(rows) is not Rows:
        rows = Rows(rows)
    # Every field as (length word per row, data bytes end to end, bytes per row or -1 (NULL)).
    fields: dict[str, tuple[I64, U8]] = {}
    for name in _FLOATS:
        column = floats_of(rows, name)  # None: NaN (validation refuses NaN itself)
        null = np.isnan(column)
        fields[name] = (np.where(null, -1, 8),
                        column[~null].astype(">f8").view(np.uint8) if null.any()
                        else column.astype(">f8").view(np.uint8))
    for name in _TEXT:
        fields[name] = _text(values_of(rows, name))
    # Fields of one length in every row first: each at one offset in every row.
    uniform = [name for name, (lengths, _) in fields.items() if n and (lengths == lengths[0]).all()]
    varying = [name for name in fields if name not in uniform]
    fixed = 2 + sum(4 + max(int(fields[name][0][0]), 0) for name in uniform)
    row_len = np.full(n, fixed, np.int64)
    for name in varying:
        row_len += 4 + np.maximum(fields[name][0], 0)
    width = int(row_len.max()) if n else fixed
    grid = np.empty((n, width), np.uint8)
    grid[:, :2] = _COUNT
    at = 2
    for name in uniform:
        lengths, data = fields[name]
        size = max(int(lengths[0]), 0)
        grid[:, at:at + 4] = np.frombuffer(struct.pack("!i", int(lengths[0])), np.uint8)
        if size:
            grid[:, at + 4:at + 4 + size] = data.reshape(n, size)
        at += 4 + size
    if varying:
        flat = grid.reshape(-1)
        offset = np.arange(n, dtype=np.int64) * width + at  # each row's next field
        for name in varying:
            lengths, data = fields[name]
            flat[offset[:, None] + np.arange(4)] = (
                lengths.astype(">i4").view(np.uint8).reshape(n, 4))
            sizes = np.maximum(lengths, 0)
            flat[spans(offset + 4, sizes)] = data
            offset += 4 + sizes
        body = grid[np.arange(width) < row_len[:, None]]  # the rows end to end, no padding
    else:
        body = grid.reshape(-1)
    out = np.concatenate([np.frombuffer(HEADER, np.uint8), body,
                          np.frombuffer(TRAILER, np.uint8)])
    return [*uniform, *varying], memoryview(out.data)
