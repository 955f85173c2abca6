"""Dump parsing, Ray-free: a chunk of a Wikidata JSON, N-Triples or Turtle dump -> statement rows.

Every dump is cut into chunks (``plan_chunks``): whole files when gzip (it cannot be entered
mid-stream) or Turtle (prefixes and multi-line statements; parsed by rdflib), runs of streams of a
multistream bz2 file (``bz2_streams``; a single-stream file is whole), byte ranges of ``chunk_bytes`` when plain text (a line belongs to the chunk
its first byte is in). ``parse_chunk`` turns one chunk into an Arrow table of ``STATEMENTS``:

    kind  ENTITY (s = key)          an entity of the side (after its filters)
          LABEL  (s, o = text, rank) a name candidate; the lowest rank names the entity
          TYPE   (s, o = type)       for an N-Triples type filter (resolved per entity later)
          REL    (s, p, o = key)     a relation triple (o another entity's key)
          ATTR   (s, p, o = value)   an attribute triple with a readable value
          PROP   (s = P-id, o = label) a Wikidata property's label (relation names)
          LINK   (s = KG1 key, o = KG2 key, where) a gold link
          BAD    (s = file, o = message, where)  a skipped line (data.skip_bad_lines)

Keys are full IRIs on both formats (a Wikidata item is ``http://www.wikidata.org/entity/Q42``),
so owl:sameAs files name them directly. The Ray layer (``hiea_ray.ops.dump_ingest``) groups the rows
by key, gives int64 ids and joins the triples; nothing here holds more than one chunk.
"""

from __future__ import annotations

import bz2
import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass

import pyarrow as pa

from hiea_ray.errors import UserError
from hiea_ray.kg.pairspec import OWL_SAMEAS, RDF_TYPE, LinkSpec, SideSpec

ENTITY, LABEL, TYPE, REL, ATTR, PROP, LINK, BAD = range(8)
STATEMENTS = pa.schema(
    [("kind", pa.int8()), ("kg", pa.int8()), ("s", pa.string()), ("p", pa.string()), ("o", pa.string()),
     ("rank", pa.int32()), ("where", pa.string())]
)
# The rank of a label: by language preference, then aliases after all labels; uri names come last.
NO_LABEL = 1 << 20


@dataclass
class Chunk:
    """A piece of one dump file: bytes [start, end) of it, or the whole file (end = -1)."""

    kg: int  # 1 or 2; 0 = the links file
    path: str
    start: int = 0
    end: int = -1
    size: int = 0  # bytes on disk of the piece (compressed size for whole compressed files)
    prev: int = -1  # bz2 ranges: where the stream before ``start`` begins (-1: none)

    def where(self, lineno: int, offset: int) -> str:
        if self.start == 0:
            return f"{self.path}:{lineno}"
        if self.path.endswith(".bz2"):
            return f"{self.path}: line {lineno} of the bz2 streams from byte {self.start}"
        return f"{self.path}: line starting at byte {offset}"


def plan_chunks(kg: int, files: list[str], chunk_bytes: int, whole: bool = False) -> list[Chunk]:
    """Chunks of the files: whole files when compressed or ``whole`` (Turtle), else byte ranges."""
    out = []
    for path in files:
        try:
            size = os.path.getsize(path)
        except OSError as e:
            raise UserError(f"{path}: cannot read ({e.strerror})") from None
        if not whole and path.endswith(".bz2") and size > chunk_bytes:
            out += _bz2_chunks(kg, path, size, chunk_bytes)
            continue
        if whole or path.endswith((".gz", ".bz2")) or size <= chunk_bytes:
            out.append(Chunk(kg, path, 0, -1, size))
            continue
        for start in range(0, size, chunk_bytes):
            end = min(size, start + chunk_bytes)
            out.append(Chunk(kg, path, start, end, end - start))
    return out


# A bz2 stream starts with "BZh" + the block size digit + the block magic 0x314159265359.
_BZ2_STREAM = re.compile(rb"BZh[1-9]1AY&SY")


def bz2_streams(path: str, scan_bytes: int = 1 << 24) -> list[int]:
    """Byte offsets of the streams of a multistream .bz2 file (pbzip2, lbzip2 and Wikidata's
    multistream dumps write one stream per block): the stream header pattern, each candidate
    checked by decompressing from it."""
    found = []
    with open(path, "rb") as f:
        base, tail = 0, b""
        while True:
            block = f.read(scan_bytes)
            if not block:
                break
            data = tail + block
            for m in _BZ2_STREAM.finditer(data):
                off = base - len(tail) + m.start()
                if not found or off > found[-1]:
                    found.append(off)
            tail = data[-9:]
            base += len(block)
        real = []
        for off in found:
            f.seek(off)
            try:
                bz2.BZ2Decompressor().decompress(f.read(1 << 16), max_length=1)
                real.append(off)
            except (OSError, EOFError):
                continue  # the pattern inside compressed data
    return real


def _bz2_chunks(kg: int, path: str, size: int, chunk_bytes: int) -> list[Chunk]:
    """Byte ranges of a multistream .bz2 cut at stream starts, about ``chunk_bytes`` each (one
    chunk when the file is a single stream)."""
    starts = bz2_streams(path)
    if len(starts) < 2 or starts[0] != 0:
        return [Chunk(kg, path, 0, -1, size)]
    out, begin, prev = [], 0, -1
    for i, off in enumerate(starts[1:], 1):
        if off - begin >= chunk_bytes:
            out.append(Chunk(kg, path, begin, off, off - begin, prev))
            begin, prev = off, starts[i - 1]
    out.append(Chunk(kg, path, begin, size, size - begin, prev))
    return out


def _bz2_range_lines(chunk: Chunk):
    """Lines of the bz2 streams starting in [start, end): a line begun in them and running on past
    ``end`` is read to its end from the next stream; a line begun in the stream before ``start``
    belongs to the previous chunk (that stream is decompressed to see whether it ended with a line
    break). A line belongs to the chunk its first byte is in."""
    with open(chunk.path, "rb") as f:
        skip = False
        if chunk.start > 0:
            f.seek(chunk.prev)
            skip = not bz2.decompress(f.read(chunk.start - chunk.prev)).endswith(b"\n")
        f.seek(chunk.start)
        pos, pending, lineno, past_end = chunk.start, b"", 0, False
        d, fed = bz2.BZ2Decompressor(), False
        while True:
            if d.eof:
                rest = d.unused_data
                next_start = pos - len(rest)  # compressed offset of the next stream
                d, fed = bz2.BZ2Decompressor(), False
                if next_start >= chunk.end:
                    past_end = True
                    if skip or not pending:
                        return  # nothing of ours runs on into the next chunk
                data = b""
                if rest:
                    data, fed = d.decompress(rest), True
            else:
                raw = f.read(1 << 20)
                if not raw:
                    if fed:
                        raise EOFError("compressed file ended before the end-of-stream marker was reached")
                    break
                pos += len(raw)
                data, fed = d.decompress(raw), True
            lines = (pending + data).split(b"\n")
            pending = lines.pop()
            for line in lines:
                if skip:
                    skip = False
                    continue
                lineno += 1
                yield lineno, chunk.start, line + b"\n"
                if past_end:
                    return
        if pending and not skip:
            lineno += 1
            yield lineno, chunk.start, pending


def read_lines(chunk: Chunk):
    """Yield (lineno, byte offset, line) of the chunk: line numbers count from the file's start
    when the chunk starts there. A truncated or corrupt compressed file is a ``UserError``."""
    path = chunk.path
    if path.endswith(".bz2") and chunk.end >= 0:
        try:
            yield from _bz2_range_lines(chunk)
        except (EOFError, OSError) as e:
            raise UserError(f"{path}: truncated or corrupt bz2 stream in bytes {chunk.start}-{chunk.end} ({e})") from None
        return
    try:
        f = open_binary(path)  # multistream bz2 files (pbzip2 / Wikidata) read as one stream
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    lineno, pos = 0, chunk.start
    try:
        with f:
            if chunk.start > 0:
                f.seek(chunk.start - 1)
                pos = chunk.start - 1 + len(f.readline())  # the rest of the previous chunk's last line
            for raw in f:
                if chunk.end >= 0 and pos >= chunk.end:
                    break
                lineno += 1
                yield lineno, pos, raw
                pos += len(raw)
    except (EOFError, zlib.error, OSError) as e:
        what = "truncated" if isinstance(e, EOFError) else "corrupt"
        raise UserError(f"{path}: {what} compressed file after line {lineno} ({e})") from None


class Rows:
    """Column buffers of statement rows for one chunk."""

    def __init__(self, kg: int):
        self.kg = kg
        self.cols = {name: [] for name in STATEMENTS.names}

    def add(self, kind: int, s: str, p: str = "", o: str = "", rank: int = 0, where: str = "") -> None:
        c = self.cols
        c["kind"].append(kind)
        c["kg"].append(self.kg)
        c["s"].append(s)
        c["p"].append(p)
        c["o"].append(o)
        c["rank"].append(rank)
        c["where"].append(where)

    def table(self) -> pa.Table:
        return pa.table(self.cols, schema=STATEMENTS)


# --- Wikidata JSON ------------------------------------------------------------------------------


def wikidata_value(datavalue: dict) -> str | None:
    """A readable string for a claim's datavalue (None when it has no readable form)."""
    v, t = datavalue.get("value"), datavalue.get("type")
    if t == "string":
        return str(v)
    if t == "monolingualtext":
        return str(v.get("text", ""))
    if t == "quantity":
        amount = str(v.get("amount", "")).lstrip("+")
        unit = str(v.get("unit", "1"))
        return amount if unit == "1" else f"{amount} {unit.rsplit('/', 1)[-1]}"
    if t == "time":
        time = str(v.get("time", ""))
        sign = "-" if time.startswith("-") else ""
        date = time.lstrip("+-").split("T", 1)[0]
        precision = int(v.get("precision", 11))
        parts = date.split("-")
        keep = 1 if precision <= 9 else 2 if precision == 10 else 3
        return sign + "-".join(parts[:keep])
    if t == "globecoordinate":
        return f"{v.get('latitude')}, {v.get('longitude')}"
    if t == "wikibase-entityid":
        return entity_id(v)
    return None


def entity_id(value: dict) -> str | None:
    """Q42 / P31 of an entity reference, in the current (``id``) or the 2014-15 (``numeric-id``) form."""
    if "id" in value:
        return str(value["id"])
    num = value.get("numeric-id")
    if num is None:
        return None
    prefix = {"item": "Q", "property": "P", "lexeme": "L"}.get(value.get("entity-type", "item"), "Q")
    return f"{prefix}{num}"


class WikidataParser:
    """One entity per line inside a JSON array (``[`` / ``]`` lines, a ``,`` after each entity)."""

    def __init__(self, side: SideSpec, links: LinkSpec | None = None, link_kg: int = 0):
        self.side = side
        self.lang_rank = {lang: i for i, lang in enumerate(side.languages)}
        self.types = set(side.entity_types)
        self.instance_of = set(side.instance_of)
        self.props = set(side.properties)
        self.links = links if links and links.format.startswith("wikidata-") else None
        self.link_kg = link_kg  # which KG this dump is (1 or 2), for the direction of the links

    def parse(self, line: bytes, rows: Rows, where: str) -> None:
        text = line.strip()
        if text in (b"", b"[", b"]"):
            return
        if text.endswith(b","):
            text = text[:-1]
        try:
            ent = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"not a JSON entity ({e})") from None
        if not isinstance(ent, dict) or not isinstance(ent.get("id"), str):
            raise ValueError("a JSON entity needs a string \"id\"")
        eid, etype = ent["id"], ent.get("type", "item")
        labels = _dict(ent.get("labels"))
        if etype == "property":
            best = self._label(labels)
            if best is not None:
                rows.add(PROP, eid, o=best[1])
        if etype not in self.types:
            return
        claims = _dict(ent.get("claims"))
        if self.instance_of:
            types = {entity_id(_dict(_dict(c.get("mainsnak")).get("datavalue")).get("value") or {})
                     for c in claims.get("P31", []) if isinstance(c, dict)}
            if not types & self.instance_of:
                return
        key = self.side.entity_prefix + eid
        rows.add(ENTITY, key)
        n = len(self.lang_rank)
        for lang, rank in self.lang_rank.items():
            lab = labels.get(lang)
            if isinstance(lab, dict) and lab.get("value"):
                rows.add(LABEL, key, o=str(lab["value"]), rank=rank)
            if self.side.aliases:
                al = _dict(ent.get("aliases")).get(lang) or []
                if al and isinstance(al[0], dict) and al[0].get("value"):
                    rows.add(LABEL, key, o=str(al[0]["value"]), rank=n + rank)
        for pid, statements in claims.items():
            if self.props and pid not in self.props:
                continue
            for st in statements if isinstance(statements, list) else []:
                snak = _dict(_dict(st).get("mainsnak"))
                if snak.get("snaktype", "value") != "value" or "datavalue" not in snak:
                    continue
                dv = _dict(snak["datavalue"])
                val = _dict(dv.get("value")) if dv.get("type") == "wikibase-entityid" else None
                if val is not None and val.get("entity-type", "item") == "item" and snak.get("datatype", "wikibase-item") == "wikibase-item":
                    target = entity_id(val)
                    if target:
                        rows.add(REL, key, pid, self.side.entity_prefix + target)
                    continue
                value = wikidata_value(dv)
                if value is not None:
                    rows.add(ATTR, key, pid, value)
        if self.links is not None:
            other = None
            if self.links.format == "wikidata-sitelink":
                sl = _dict(_dict(ent.get("sitelinks")).get(self.links.site))
                if sl.get("title"):
                    other = self.links.template.format(str(sl["title"]).replace(" ", "_"))
            else:
                for st in claims.get(self.links.property, []):
                    dv = _dict(_dict(_dict(st).get("mainsnak")).get("datavalue"))
                    if dv.get("type") == "string":
                        other = self.links.template.format(dv["value"])
                        break
            if other:
                a, b = (key, other) if self.link_kg == 1 else (other, key)
                rows.add(LINK, a, o=b, where=where)

    def _label(self, labels: dict):
        best = None
        for lang, rank in self.lang_rank.items():
            lab = labels.get(lang)
            if isinstance(lab, dict) and lab.get("value") and (best is None or rank < best[0]):
                best = (rank, str(lab["value"]))
        return best


def _dict(v) -> dict:
    return v if isinstance(v, dict) else {}


# --- N-Triples ------------------------------------------------------------------------------------

_IRI = r"<([^<>\"{}|^`\\\s]*)>"
_NODE = rf"(?:{_IRI}|_:(\S+))"
_LIT = r'"((?:[^"\\]|\\.)*)"(?:@([A-Za-z][A-Za-z0-9-]*)|\^\^' + _IRI + r")?"
NT_LINE = re.compile(rf"^\s*{_NODE}\s+{_IRI}\s+(?:{_NODE}|{_LIT})\s*\.\s*(?:#.*)?$")
_ESC = re.compile(r"\\(u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|[tbnrf\"'\\])")
_SIMPLE = {"t": "\t", "b": "\b", "n": "\n", "r": "\r", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


def unescape(s: str) -> str:
    if "\\" not in s:
        return s
    return _ESC.sub(lambda m: _SIMPLE.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), s)


def parse_ntriple(line: str):
    """(subject, predicate, object, is_literal, language) of one N-Triples line; None for a blank or
    comment line; ValueError for a malformed one. Blank nodes are ``_:label``."""
    s = line.strip()
    if not s or s.startswith("#"):
        return None
    m = NT_LINE.match(s)
    if m is None:
        raise ValueError("not an N-Triples statement (<subject> <predicate> object .)")
    s_iri, s_blank, pred, o_iri, o_blank, lit, lang, _dt = m.groups()
    subj = s_iri if s_iri is not None else "_:" + s_blank
    if o_iri is not None or o_blank is not None:
        return subj, pred, o_iri if o_iri is not None else "_:" + o_blank, False, ""
    return subj, pred, unescape(lit), True, (lang or "").lower()


class NTriplesParser:
    """Subjects are the entities; IRI objects relation targets; literals attributes; the label
    predicates' literals (in the side's languages) names; rdf:type feeds the type filter."""

    def __init__(self, side: SideSpec):
        self.side = side
        self.lang_rank = {lang.lower(): i for i, lang in enumerate(side.languages)}
        self.label_rank = {p: i for i, p in enumerate(side.label_predicates)}
        self.props = set(side.properties)
        self.typed = bool(side.instance_of)
        self.seen: set[str] = set()  # subjects already given an ENTITY row in this chunk

    def parse(self, line: bytes, rows: Rows, where: str) -> None:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"not UTF-8 ({e})") from None
        t = parse_ntriple(text)
        if t is not None:
            self.triple(*t, rows)

    def triple(self, s: str, p: str, o: str, literal: bool, lang: str, rows: Rows) -> None:
        if s not in self.seen:
            self.seen.add(s)
            rows.add(ENTITY, s)
        if literal and p in self.label_rank:
            rank = self.lang_rank.get(lang)
            if rank is not None:
                rows.add(LABEL, s, o=o, rank=rank * len(self.label_rank) + self.label_rank[p])
            return
        if p == RDF_TYPE:
            if self.typed:
                rows.add(TYPE, s, o=o)
            return
        if self.props and p not in self.props:
            return
        rows.add(ATTR if literal else REL, s, p, o)


def parse_turtle(chunk: Chunk, side: SideSpec, rows: Rows) -> None:
    """A whole Turtle file through rdflib (the graph of one file is held by the worker: shard big
    Turtle dumps, or convert them to N-Triples, which streams). Its triples go through the
    N-Triples side's rules."""
    from rdflib import BNode, Graph, Literal

    g = Graph()
    try:
        with open_binary(chunk.path) as f:
            g.parse(f, format="turtle", publicID="urn:x-hiea:base/")
    except (EOFError, zlib.error, OSError) as e:
        raise UserError(f"{chunk.path}: truncated or corrupt compressed file ({e})") from None
    except Exception as e:  # noqa: BLE001 - rdflib's BadSyntax and friends: the file and its message
        raise UserError(f"{chunk.path}: not valid Turtle ({' '.join(str(e).split())[:300]})") from None
    nt = NTriplesParser(side)

    def node(x) -> str:
        return f"_:{x}" if isinstance(x, BNode) else str(x)

    for s, p, o in g:
        if isinstance(o, Literal):
            nt.triple(node(s), str(p), str(o), True, (o.language or "").lower(), rows)
        else:
            nt.triple(node(s), str(p), node(o), False, "", rows)


def open_binary(path: str):
    if path.endswith(".gz"):
        return gzip.open(path, "rb")
    if path.endswith(".bz2"):
        return bz2.open(path, "rb")
    return open(path, "rb")


def sameas_link(line: bytes, reverse: bool):
    """(KG1 key, KG2 key) of an owl:sameAs line; None for a blank/comment line."""
    t = parse_ntriple(line.decode("utf-8"))
    if t is None:
        return None
    s, p, o, literal, _ = t
    if p != OWL_SAMEAS or literal:
        raise ValueError(f"expected <a> <{OWL_SAMEAS}> <b> .")
    return (o, s) if reverse else (s, o)


def tsv_link(line: bytes, prefixes: tuple[str, str]):
    text = line.decode("utf-8").rstrip("\r\n")
    if not text.strip():
        return None
    parts = text.split("\t")
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise ValueError(f"expected 2 tab-separated keys, found {len(parts)} fields")
    return tuple(prefixes[i] + parts[i] if re.fullmatch(r"[QP]\d+", parts[i]) else parts[i] for i in (0, 1))


# --- one chunk ------------------------------------------------------------------------------------


def parse_chunk(chunk: Chunk, side: SideSpec | None, links: LinkSpec | None, skip_bad: bool,
                link_kg: int = 0, prefixes: tuple[str, str] = ("", "")) -> pa.Table:
    """All statement rows of one chunk. A bad line is a ``UserError`` naming the file and line
    (or byte offset), unless ``skip_bad``: then one BAD row for it."""
    rows = Rows(chunk.kg)
    if side is not None and side.format == "turtle":
        parse_turtle(chunk, side, rows)
        return rows.table()
    if chunk.kg == 0:
        fn = (lambda ln, r, w: _link(sameas_link(ln, links.reverse), r, w)) if links.format == "sameas" \
            else (lambda ln, r, w: _link(tsv_link(ln, prefixes), r, w))
    elif side.format == "wikidata-json":
        fn = WikidataParser(side, links, link_kg).parse
    else:
        fn = NTriplesParser(side).parse
    for lineno, offset, line in read_lines(chunk):
        where = chunk.where(lineno, offset)
        try:
            fn(line, rows, where)
        except (ValueError, UnicodeDecodeError) as e:
            if not skip_bad:
                raise UserError(f"{where}: {e} (set data.skip_bad_lines=true to skip such lines)") from None
            rows.add(BAD, chunk.path, o=str(e), where=where)
    return rows.table()


def _link(pair, rows: Rows, where: str) -> None:
    if pair is not None:
        rows.add(LINK, pair[0], o=pair[1], where=where)
