"""The text read in an index's images: one catalog row per line, searchable by any piece of it.

`ocr_lines` holds each line as read (text, box, confidence) and its folded form
(retrieval.search.normalise). A contentless FTS5 table with the trigram tokenizer indexes the
folded text, so a piece of three or more characters is a phrase of trigrams: an exact substring
match straight from the index. Trigrams cannot cover one or two characters, so each folded line
is indexed with two PAD characters after it (a private-use code point no folded text holds):
then every occurrence of a one- or two-character piece starts a trigram, and the lines holding
it are the documents of the terms in one range of the index's vocabulary (fts5vocab), read
without a scan. At 1M lines that takes 0.1-11 ms for two characters where a scan of the folded
column takes 260-370 ms; one character matches a share of all lines and costs about 3 µs a match.

`ocr_read` records which items were read (and why one gave no lines), so an image without text
is not read again. Triggers keep the FTS index in step with `ocr_lines`, and drop an item's lines
with the item: the build's `drop_items` needs no change. `put_items` replacing a changed item's
row keeps its lines (its id stays; SQLite fires no delete trigger for REPLACE): the build that
reads the changed image again replaces them with `put_lines` in the same transaction.

The tables come with every new on-disk catalog; an older catalog gets them on its first
`put_lines`. A catalog without them has no text to match, and behaves as it always did.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence

from retrieval.errors import TusouError
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
        ids = [(int(i),) for i in items]
        db.executemany("DELETE FROM ocr_lines WHERE item = ?", ids)
        db.executemany("DELETE FROM ocr_read WHERE item = ?", ids)


def read_items(db: sqlite3.Connection) -> dict[int, str | None]:
    """Every item read so far → why it gave no lines (None: it was read)."""
    return dict(db.execute("SELECT item, reason FROM ocr_read").fetchall()) if has_text_tables(db) else {}


def lines_holding(db: sqlite3.Connection, pieces: Sequence[str], filters: Filters | None = None) -> list[tuple[int, int, str, float]]:
    """(line id, item, folded text, confidence) of every line whose folded text holds any of `pieces`
    (folded, non-empty) exactly, of the items passing `filters`. Only what ranking needs: a common
    character can match a fifth of all lines, and their text and boxes are read for the best only."""
    if not pieces or not has_text_tables(db):
        return []
    sources, params = [], []
    for piece in dict.fromkeys(pieces):
        if len(piece) >= 3:
            sources.append("SELECT rowid FROM ocr_fts WHERE ocr_fts MATCH ?")
            params.append('"' + piece.replace('"', '""') + '"')
        else:  # every term (a trigram) starting with the piece: piece <= term < piece + the last code point
            sources.append("SELECT doc FROM ocr_terms WHERE term >= ? AND term < ?")
            params += [piece, piece + "\U0010ffff"]
    filtered = filters is not None and filters.active
    where, filter_params = filters.where() if filtered else ("1", [])
    query = (  # each line once (the vocabulary lists a line once per occurrence), before reading its row
        f"WITH hit(line_id) AS (SELECT DISTINCT * FROM ({' UNION ALL '.join(sources)})) "
        "SELECT ocr_lines.id, ocr_lines.item, ocr_lines.norm, ocr_lines.confidence FROM hit JOIN ocr_lines ON ocr_lines.id = hit.line_id "
        + (f"JOIN items ON items.id = ocr_lines.item WHERE {where}" if filtered else "")
    )
    return db.execute(query, [*params, *filter_params]).fetchall()


def line_texts(db: sqlite3.Connection, ids: Sequence[int]) -> dict[int, tuple[str, list[list[float]]]]:
    """Line id → its text as read and its box."""
    found = {}
    for start in range(0, len(ids), 500):
        chunk = [int(i) for i in ids[start : start + 500]]
        rows = db.execute(f"SELECT id, text, box FROM ocr_lines WHERE id IN ({', '.join('?' * len(chunk))})", chunk)
        found |= {line_id: (text, json.loads(box)) for line_id, text, box in rows}
    return found


def _box(box: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[round(float(x), 1), round(float(y), 1)] for x, y in box]
