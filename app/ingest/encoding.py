"""Which text encoding a file uses: UTF-8 (with or without BOM) first, else charset-normalizer.

Korean spreadsheets are often saved as CP949 / EUC-KR. The two differ for syllables outside
KS X 1001 (CP949 has codes for them, Python's EUC-KR spells them as jamo sequences), and
charset-normalizer tells them apart; the codec it names is checked against every byte.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import charset_normalizer

from app.ingest.errors import IngestError

CHUNK_BYTES = 1024 * 1024
# Names we report, so users see familiar spellings rather than Python codec aliases.
_REPORTED = {"utf_8": "utf-8", "utf_8_sig": "utf-8-sig", "cp949": "cp949", "euc_kr": "euc-kr"}


def _decodes_fully(path: Path, encoding: str) -> bool:
    """Decode the whole file incrementally: a sample can look fine while a later byte is not."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    try:
        with path.open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def reported_name(encoding: str) -> str:
    key = codecs.lookup(encoding).name.replace("-", "_")
    return _REPORTED.get(key, key.replace("_", "-"))


def detect_encoding(path: Path, shown_name: str) -> str:
    """The Python codec that decodes every byte of `path`; IngestError when none does."""
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(codecs.BOM_UTF8):
        if _decodes_fully(path, "utf-8-sig"):
            return "utf-8-sig"
    elif _decodes_fully(path, "utf-8"):
        return "utf-8"
    best = charset_normalizer.from_path(path).best()
    if best is not None and _decodes_fully(path, best.encoding):
        return best.encoding
    raise IngestError(
        f"'{shown_name}' is not readable text: its bytes are not UTF-8 and no other encoding "
        "(such as CP949/EUC-KR) decodes them. If it is a spreadsheet, export it as "
        "'CSV UTF-8'; if it is a binary file, upload CSV, TSV, JSON, JSONL or Parquet instead"
    )
