"""Reading input files within a memory bound: a small file that expands to gigabytes (a ``.gz`` bomb, a Parquet
file whose dictionary-encoded or declared sizes dwarf its bytes) is refused once it has expanded past the bound,
before it is all in memory.

Two bounds, both in :class:`InputLimits`: ``max_input_mb``, the most any one input may expand to in memory (the
decompressed bytes of a text file, the Arrow size of a Parquet file's rows); and ``max_expansion``, the most that
expanded size may be as a multiple of the file's own size, checked once it passes ``EXPANSION_FLOOR_MB`` (small
files of repeated text stay readable). Each is a clear :class:`~rrhf_core.errors.DataError` naming the file, the
sizes and the setting that raises it.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rrhf_core.errors import DataError

MB = 1 << 20
EXPANSION_FLOOR_MB = 64  # expansion is judged only past this size
CHUNK = 4 * MB  # decompression step
PARQUET_BATCH_ROWS = 64  # rows decoded at a time (a bound on what one step allocates)


@dataclass(frozen=True)
class InputLimits:
    """``max_input_mb``: the most one input may expand to in memory; ``max_expansion``: the most it may expand
    relative to its size on disk; ``setting``: where a user raises them (named in the error)."""

    max_input_mb: int = 1024
    max_expansion: int = 100
    setting: str = ""  # the stage whose settings hold the two bounds ("ingest"), or none

    def check(self, path: Path, expanded: int, on_disk: int, what: str = "input") -> None:
        """Raise when ``expanded`` bytes (so far) of ``path`` (``on_disk`` bytes) break a bound."""
        raise_it = " (raise the {} setting {} if the file is genuine)"
        if expanded > self.max_input_mb * MB:
            where = raise_it.format(self.setting, "max_input_mb") if self.setting else ""
            raise DataError(
                f"{what} {path} expands past {self.max_input_mb} MB in memory (max_input_mb; the file is "
                f"{_size(on_disk)} on disk){where}; split it into smaller files"
            )
        if expanded > EXPANSION_FLOOR_MB * MB and expanded > self.max_expansion * max(on_disk, 1):
            where = raise_it.format(self.setting, "max_expansion") if self.setting else ""
            raise DataError(
                f"{what} {path} expands more than {self.max_expansion}x ({_size(on_disk)} on disk, already "
                f"{_size(expanded)} in memory): refused as a decompression bomb{where}"
            )


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / 1024:.1f} KB" if n >= 1024 else f"{n} bytes"


def read_bytes(path: Path, limits: InputLimits, what: str = "input") -> bytes:
    """The file's bytes, decompressed when its name ends in ``.gz``, within ``limits``."""
    on_disk = os.stat(path).st_size
    if path.suffix.lower() != ".gz":
        limits.check(path, on_disk, on_disk, what)
        return path.read_bytes()
    out = bytearray()
    with gzip.open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            out += chunk
            limits.check(path, len(out), on_disk, what)
    return bytes(out)


def read_parquet(path: Path, limits: InputLimits, what: str = "input") -> pa.Table:
    """A Parquet file (or a gzipped one, ``.parquet.gz``) as a table, within ``limits``: the sizes its footer
    declares are checked before any row is read, then the rows' Arrow size as they are decoded."""
    on_disk = os.stat(path).st_size
    if path.suffix.lower() == ".gz":
        source: pa.BufferReader | Path = pa.BufferReader(read_bytes(path, limits, what))
    else:
        source = path
    pf = pq.ParquetFile(source)
    meta = pf.metadata
    declared = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    limits.check(path, declared, on_disk, what)
    batches, total = [], 0
    for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        total += batch.nbytes
        limits.check(path, total, on_disk, what)
        batches.append(batch)
    return pa.Table.from_batches(batches, schema=pf.schema_arrow)
