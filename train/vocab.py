"""Character-level BERT vocabularies for the project's own models.

Chinese BERT tokenizers split every CJK character into its own token, so a vocabulary of
single characters (plus ASCII word pieces) covers any Chinese text without a trained
WordPiece model. `test-tiny` ships the full CJK block; the demo model keeps only the
characters its captions use.
"""

from __future__ import annotations

import argparse
import string
from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CJK_BLOCK = "".join(chr(c) for c in range(0x4E00, 0x9FA6))
ASCII_PIECES = string.ascii_lowercase + string.digits
PUNCTUATION = "，。、；：？！“”‘’（）《》【】…—·" + string.punctuation


def char_vocab(chars: Iterable[str]) -> list[str]:
    """Special tokens, then each distinct character once, then ASCII continuation pieces."""
    seen: dict[str, None] = dict.fromkeys(SPECIAL_TOKENS)
    for ch in list(chars) + list(ASCII_PIECES) + list(PUNCTUATION):
        if not ch.isspace():
            seen.setdefault(ch.lower(), None)
    tokens = list(seen)
    tokens += [f"##{c}" for c in ASCII_PIECES]
    return tokens


def write_vocab(directory: Path, tokens: list[str]) -> Path:
    """Write `vocab.txt` (what `BertTokenizer.from_pretrained(directory)` reads)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "vocab.txt"
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a character vocabulary (vocab.txt) for BertTokenizer.")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--charset", choices=["cjk", "synthetic"], default="cjk",
                        help="cjk: the whole CJK block (test-tiny); synthetic: the caption set's characters (demo)")
    args = parser.parse_args()
    if args.charset == "cjk":
        chars = CJK_BLOCK
    else:
        from retrieval.datasets.synthetic import vocabulary_text

        chars = vocabulary_text()
    write_vocab(args.out, char_vocab(chars))


if __name__ == "__main__":
    main()
