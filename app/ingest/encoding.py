"""Which text encoding a file uses: UTF-8 (with or without BOM) first, else charset-normalizer.

Korean spreadsheets are often saved as CP949 / EUC-KR. The two differ for syllables outside
KS X 1001 (CP949 has codes for them, Python's EUC-KR spells them as jamo sequences), and
charset-normalizer tells them apart; the codec it names is checked against every byte.
"""

from __future__ import annotations

import codecs
from pathlib import Path

import charset_normalizer
from charset_normalizer.md import mess_ratio

from app.ingest.errors import IngestError

CHUNK_BYTES = 1024 * 1024
# Read without a warning: UTF-8 above all, and the Korean codecs this service is documented for.
KOREAN_CODECS = {"cp949", "euc_kr", "johab"}
# charset-normalizer's share of the decoded text that reads as words of a language it knows;
# below this the codec is a guess that merely decodes every byte.
MIN_COHERENCE = 0.2
# Windows-1252, the most common legacy encoding of spreadsheets and Windows tools. Single-byte
# codecs decode the same Western text equally well (cp1250, cp1257, mac_iceland...) and
# charset-normalizer ranks ties arbitrarily, so a tie goes to this one.
WESTERN = "cp1252"
# Text compared for oddities (charset-normalizer's mess ratio), as its own detection samples.
MESS_SAMPLE_BYTES = 64 * 1024
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


def _reads_as_western(path: Path, best_chaos: float) -> bool:
    """Whether Windows-1252 decodes every byte of `path` with no more mess than the best guess."""
    if not _decodes_fully(path, WESTERN):
        return False
    with path.open("rb") as f:
        sample = f.read(MESS_SAMPLE_BYTES).decode(WESTERN, errors="ignore")
    return mess_ratio(sample, maximum_threshold=1.0) <= best_chaos


def reported_name(encoding: str) -> str:
    key = codecs.lookup(encoding).name.replace("-", "_")
    return _REPORTED.get(key, key.replace("_", "-"))


def detect_encoding(path: Path, shown_name: str) -> tuple[str, str | None]:
    """(the Python codec that decodes every byte of `path`, a warning or None); IngestError when
    no codec does, or when the only candidates are guesses that nothing supports.

    UTF-8 and the Korean codecs are read as they are. Another codec is used only when
    charset-normalizer recognises a language in the decoded text, and then with a warning: a
    decoder that merely accepts every byte (cp775, mac_iceland...) turns unknown bytes into
    mojibake without complaint, and that must not be stored silently. Where Windows-1252 reads
    the file as cleanly as the best guess, it wins the tie."""
    with path.open("rb") as f:
        head = f.read(4)
    if head.startswith(codecs.BOM_UTF8):
        if _decodes_fully(path, "utf-8-sig"):
            return "utf-8-sig", None
    elif _decodes_fully(path, "utf-8"):
        return "utf-8", None
    best = charset_normalizer.from_path(path).best()
    if best is not None and _decodes_fully(path, best.encoding):
        if codecs.lookup(best.encoding).name.replace("-", "_") in KOREAN_CODECS:
            return best.encoding, None
        if best.encoding != WESTERN and _reads_as_western(path, best.chaos):
            return WESTERN, (
                f"'{shown_name}' is not UTF-8; it was read as cp1252 (Windows Western European: every "
                "byte decodes, with no more oddities than any other guess). Check the preview: if "
                "characters look wrong, save the file as UTF-8 and upload it again"
            )
        if best.coherence >= MIN_COHERENCE and best.language != "Unknown":
            return best.encoding, (
                f"'{shown_name}' is not UTF-8; it was read as {reported_name(best.encoding)} (detected from "
                f"its {best.language}-looking text). Check the preview: if characters look wrong, save "
                "the file as UTF-8 and upload it again"
            )
        guess = f" (the closest guess, {reported_name(best.encoding)}, is not a confident one)"
    else:
        guess = ""
    raise IngestError(
        f"'{shown_name}' is not readable text: its bytes are not UTF-8, not CP949/EUC-KR, and no other "
        f"encoding can be told with confidence{guess}; a file that mixes encodings reads this way too. "
        "Save it as UTF-8 (from a spreadsheet: 'CSV UTF-8') and upload it again"
    )
