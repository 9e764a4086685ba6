"""The text read in an index's images: one catalog row per line, searchable by any piece of it.

`ocr_lines` holds each line as read (text, box, confidence) and its folded form
(retrieval.search.normalise). A contentless FTS5 table with the trigram tokenizer indexes the
folded text, so a piece of three or more characters is a phrase of trigrams: an exact substring
match straight from the index. Trigrams cannot cover one or two characters, so each folded line
is indexed with two PAD characters after it (a private-use code point no folded text holds):
then every occurrence of a one- or two-character piece starts a trigram, and the lines holding
it are the documents of the terms in one range of the index's vocabulary (fts5vocab), read
without a scan. At 1M lines (bench/text_search.py) two characters take 0.5 ms (p95 21 ms) and one
31 ms (p95 480 ms: a character in a fifth of all lines), where a scan of the folded column takes
210-350 ms for any query.

`ocr_read` records which items were read (and why one gave no lines), so an image without text
is not read again. Triggers keep the FTS index in step with `ocr_lines`, and drop an item's lines
with the item: the build's `drop_items` needs no change. `put_items` replacing a changed item's
row keeps its lines (its id stays; SQLite fires no delete trigger for REPLACE): the build's commit
drops them (`drop_lines`) and puts what it read in the changed image, in the same transaction.

The tables come with every new on-disk catalog; an older catalog gets them on its first
`put_lines`. A catalog without them has no text to match, and behaves as it always did.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Sequence

from retrieval.errors import TusouError
from retrieval.ocr.engine import OcrLine
from retrieval.search.filters import Filters
from retrieval.search.normalise import normalise

PAD = "\ue000"
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS ocr_lines (
        id INTEGER PRIMARY KEY,
        item INTEGER NOT NULL,
        line INTEGER NOT NULL,
        text TEXT NOT NULL,
        norm TEXT NOT NULL,
        box TEXT NOT NULL,
        confidence REAL NOT NULL,
        UNIQUE (item, line)
    )""",
    "CREATE TABLE IF NOT EXISTS ocr_read (item INTEGER PRIMARY KEY, reason TEXT)",
    "CREATE VIRTUAL TABLE IF NOT EXISTS ocr_fts USING fts5(norm, content='', tokenize='trigram case_sensitive 1')",
    "CREATE VIRTUAL TABLE IF NOT EXISTS ocr_terms USING fts5vocab(ocr_fts, 'instance')",
    f"""CREATE TRIGGER IF NOT EXISTS ocr_lines_indexed AFTER INSERT ON ocr_lines BEGIN
        INSERT INTO ocr_fts (rowid, norm) VALUES (new.id, new.norm || char({ord(PAD)}, {ord(PAD)}));
    END""",
    f"""CREATE TRIGGER IF NOT EXISTS ocr_lines_unindexed AFTER DELETE ON ocr_lines BEGIN
        INSERT INTO ocr_fts (ocr_fts, rowid, norm) VALUES ('delete', old.id, old.norm || char({ord(PAD)}, {ord(PAD)}));
    END""",
    """CREATE TRIGGER IF NOT EXISTS ocr_follows_items AFTER DELETE ON items BEGIN
        DELETE FROM ocr_lines WHERE item = old.id;
        DELETE FROM ocr_read WHERE item = old.id;
    END""",
)
"""Statements, not a script: executescript would commit the transaction it runs in."""


def create_text_tables(db: sqlite3.Connection) -> bool:
    """The OCR tables, created where missing; False when this SQLite lacks FTS5 or its trigram tokenizer
    (3.34+), which leaves the catalog as it was: an index then simply has no text to search. All or
    nothing (a savepoint, inside the caller's transaction or as its own)."""
    db.execute("SAVEPOINT text_tables")
    try:
        for statement in SCHEMA:
            db.execute(statement)
    except BaseException as exc:
        db.execute("ROLLBACK TO text_tables")
        db.execute("RELEASE text_tables")
        if isinstance(exc, sqlite3.OperationalError) and ("fts5" in str(exc) or "tokenizer" in str(exc)):
            return False
        raise
    db.execute("RELEASE text_tables")
    return True


def has_text_tables(db: sqlite3.Connection) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'ocr_lines'").fetchone() is not None


def has_lines(db: sqlite3.Connection) -> bool:
    """Whether any text was read in the catalog's images."""
    return has_text_tables(db) and db.execute("SELECT 1 FROM ocr_lines LIMIT 1").fetchone() is not None


def put_lines(db: sqlite3.Connection, item: int, lines: Iterable, reason: str | None = None) -> None:
    """Record that `item` was read: its lines (anything with text, box and confidence) replace any it
    had; `reason` says why an image gave none (unreadable, OCR failed)."""
    if not has_text_tables(db) and not create_text_tables(db):
        raise TusouError(f"searching the text in images needs SQLite 3.34+ with FTS5; this Python has SQLite {sqlite3.sqlite_version}")
    drop_lines(db, [item])
    db.executemany(
        "INSERT INTO ocr_lines (item, line, text, norm, box, confidence) VALUES (?, ?, ?, ?, ?, ?)",
        ((int(item), number, line.text, normalise(line.text), json.dumps(_box(line.box)), float(line.confidence))
         for number, line in enumerate(lines)),
    )
    db.execute("INSERT INTO ocr_read VALUES (?, ?)", (int(item), reason))


def drop_lines(db: sqlite3.Connection, items: Iterable[int]) -> None:
    """Forget what was read in `items` (they are read again by the next build that reads text)."""
    if has_text_tables(db):
        for item in items:  # streamed: a commit's items are read from SQLite as it goes
            db.execute("DELETE FROM ocr_lines WHERE item = ?", (int(item),))
            db.execute("DELETE FROM ocr_read WHERE item = ?", (int(item),))


def unread_items(db: sqlite3.Connection) -> Iterator[int]:
    """The items whose text was not read yet (every item of a catalog without the tables)."""
    if has_text_tables(db):
        yield from (item for (item,) in db.execute("SELECT id FROM items WHERE id NOT IN (SELECT item FROM ocr_read)"))
    else:
        yield from (item for (item,) in db.execute("SELECT id FROM items"))


def read_items(db: sqlite3.Connection) -> dict[int, str | None]:
    """Every item read so far → why it gave no lines (None: it was read)."""
    return dict(db.execute("SELECT item, reason FROM ocr_read").fetchall()) if has_text_tables(db) else {}


def best_lines(
    db: sqlite3.Connection, pieces: Sequence[str], score: str, params: Sequence[object],
    filters: Filters | None = None, limit: int | None = None,
) -> list[tuple[int, int, float]]:
    """(item, line id, score) of each item's best line among the lines whose folded text holds any
    of `pieces` (folded, non-empty) exactly, best first, at most `limit` (None: all), of the items
    passing `filters`. `score` is an SQL expression over a line's `norm` and `confidence` (with
    `params`): a line scoring NULL or 0 does not count. All in SQLite: a common character can match
    a fifth of all lines, and only the best few come back."""
    if not pieces or not has_text_tables(db):
        return []
    sources, hit_params = [], []
    for piece in dict.fromkeys(pieces):
        if len(piece) >= 3:
            sources.append("SELECT rowid FROM ocr_fts WHERE ocr_fts MATCH ?")
            hit_params.append('"' + piece.replace('"', '""') + '"')
        else:  # every term (a trigram) starting with the piece: piece <= term < piece + the last code point
            sources.append("SELECT doc FROM ocr_terms WHERE term >= ? AND term < ?")
            hit_params += [piece, piece + "\U0010ffff"]
    filtered = filters is not None and filters.active
    where, filter_params = filters.where() if filtered else ("1", [])
    query = (  # IN: the hits made distinct and sorted, so the rows are read in order (3x faster than a join)
        f"SELECT item, line_id, max(score) AS best FROM (SELECT ocr_lines.item AS item, ocr_lines.id AS line_id, ({score}) AS score "
        + ("FROM ocr_lines JOIN items ON items.id = ocr_lines.item " if filtered else "FROM ocr_lines ")
        + f"WHERE ocr_lines.id IN ({' UNION ALL '.join(sources)}) AND {where}) "
        "WHERE score > 0 GROUP BY item ORDER BY best DESC, item LIMIT ?"
    )
    return db.execute(query, [*params, *hit_params, *filter_params, -1 if limit is None else int(limit)]).fetchall()


def line_texts(db: sqlite3.Connection, ids: Sequence[int]) -> dict[int, tuple[str, list[list[float]], float]]:
    """Line id → its text as read, its box and its confidence."""
    found = {}
    for start in range(0, len(ids), 500):
        chunk = [int(i) for i in ids[start : start + 500]]
        rows = db.execute(f"SELECT id, text, box, confidence FROM ocr_lines WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        found |= {line_id: (text, json.loads(box), confidence) for line_id, text, box, confidence in rows}
    return found


def item_lines(db: sqlite3.Connection, item: int) -> list[dict] | None:
    """The lines read in `item`'s image, top to bottom, as `tusou ocr --json` gives them; None when
    its text was never read."""
    if not has_text_tables(db) or db.execute("SELECT 1 FROM ocr_read WHERE item = ?", (int(item),)).fetchone() is None:
        return None
    rows = db.execute("SELECT text, confidence, box FROM ocr_lines WHERE item = ? ORDER BY line", (int(item),))
    return [OcrLine(text, tuple(map(tuple, json.loads(box))), confidence).to_dict() for text, confidence, box in rows]


def _box(box: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[round(float(x), 1), round(float(y), 1)] for x, y in box]
