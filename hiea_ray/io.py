"""The Parquet contracts between stages, and id bookkeeping; Ray-free.

- Ranked lists: ``write_lists`` / ``read_lists`` — one row per source: ``src`` (int64 id),
  ``cand`` (fixed_size_list<int64>[k], -1 padded), ``score`` (fixed_size_list<float32>[k]).
  The retrieve, rerank and decode stages write them; decode and evaluate read them.
- Vectors: ``embeddings_column`` / ``column_to_numpy`` — (n, d) arrays as fixed-size lists.
- Ids: a run's tables hold global int64 ids; the decoders work on local rows of sorted id arrays
  (``rows_of`` for ids that must all be there, ``to_local`` for -1 padded lists, ``ids_or_pad``
  back to ids).
- ``read_dir`` (every Parquet file of a stage folder), ``finished_ids`` (what a resumable stage
  already wrote), ``TextLookup`` (entity id -> verbalized text).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)


def read_dir(folder: Path, columns: list[str] | None = None) -> pa.Table | None:
    """All ``*.parquet`` files of a folder (name order) as one table (``columns``: only these, each
    file reading those it has); None when there are none. A column some files lack (parts written
    before it existed, kept by a resumed stage) is null there."""
    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        return None
    if columns is None:
        return pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    return pa.concat_tables([pq.read_table(f, columns=[c for c in columns if c in pq.read_schema(f).names])
                             for f in files], promote_options="default")


def embeddings_column(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) array -> fixed_size_list[d] column (float32 unless the array is integer)."""
    v = np.ascontiguousarray(vectors, dtype=vectors.dtype if vectors.dtype.kind == "i" else np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1])


def column_to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """fixed_size_list<T>[d] column -> (n, d) array."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    d = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, d)


def write_lists(path: Path, src: np.ndarray, cand: np.ndarray, score: np.ndarray) -> None:
    """Ranked lists (src (n,), cand (n, k) ids, score (n, k)) -> one Parquet file."""
    k = cand.shape[1]
    table = pa.table(
        {
            "src": src,
            "cand": pa.FixedSizeListArray.from_arrays(pa.array(cand.reshape(-1)), k),
            "score": pa.FixedSizeListArray.from_arrays(pa.array(score.astype(np.float32).reshape(-1)), k),
        }
    )
    pq.write_table(table, path)


def write_decoded(out: Path, q: np.ndarray, b: np.ndarray, d) -> None:
    """A decoder's output (``core.decoders.Decoded``) in ``out``: its ranked lists, its matching and
    its done marker (``<name>.done.json``, what a resumed decode stage keeps), in ids, not local rows."""
    write_lists(out / f"{d.name}.parquet", q, ids_or_pad(b, d.idx), d.score)
    pq.write_table(pa.table({"src": q[d.match_rows], "tgt": b[d.match_cols], "score": d.match_score.astype(np.float32)}),
                   out / f"{d.name}.match.parquet")
    (out / f"{d.name}.done.json").write_text(json.dumps({"wall_s": d.wall_s}))


def read_lists(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> (src (n,), cand (n, k), score (n, k)) as written by ``write_lists``."""
    t = pq.read_table(path)
    return t["src"].to_numpy(), column_to_numpy(t["cand"]), column_to_numpy(t["score"])


def rows_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Rows of ``ids`` in a sorted id array; a missing id is a KeyError."""
    rows = np.minimum(np.searchsorted(sorted_ids, ids), max(len(sorted_ids) - 1, 0))
    if len(ids) and (len(sorted_ids) == 0 or not np.array_equal(sorted_ids[rows], ids)):
        raise KeyError("ids missing from index")
    return rows


def to_local(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """-1 padded id lists -> rows of ``sorted_ids`` (padding stays -1)."""
    rows = np.searchsorted(sorted_ids, np.maximum(ids, 0))
    rows = np.minimum(rows, len(sorted_ids) - 1)
    return np.where(ids >= 0, rows, -1)


def ids_or_pad(ids: np.ndarray, local: np.ndarray) -> np.ndarray:
    """Local rows (-1 padded) -> ids (-1 padded)."""
    return np.where(local >= 0, ids[np.maximum(local, 0)], -1)


def finished_ids(parts: Path, column: str = "id") -> np.ndarray:
    """Ids in the readable part files of a resumable stage; unreadable (half-written) parts are deleted."""
    ids = []
    for f in sorted(Path(parts).glob("*.parquet")):
        try:
            ids.append(pq.read_table(f, columns=[column])[column].to_numpy())
        except (OSError, pa.ArrowException):  # a part cut off by a kill has no footer
            log.warning("dropping unreadable part %s", f)
            f.unlink()
    return np.concatenate(ids) if ids else np.zeros(0, np.int64)


class TextLookup:
    """Entity id -> verbalized text over an (id, text) table; a missing id is a KeyError."""

    def __init__(self, texts: pa.Table):
        t = texts.select(["id", "text"]).sort_by("id")
        self.ids = t["id"].to_numpy()
        self.text = t["text"].combine_chunks()

    def __call__(self, ids: np.ndarray) -> list[str]:
        rows = np.searchsorted(self.ids, ids)
        if len(ids) and (rows.max() >= len(self.ids) or not np.array_equal(self.ids[rows], ids)):
            raise KeyError("candidate ids missing from the verbalized texts")
        return self.text.take(pa.array(rows)).to_pylist()
