"""Citations resolve inside the repository: keys defined in docs/references.md, no pointers to files
that are not in it (the seed texts and notes the project was built from)."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCES = ROOT / "docs" / "references.md"
SCANNED = ("pluralign", "tests", "bench", "configs", "docs")
#: Files outside the repository that old citations pointed at.
FORBIDDEN = ("seeds/0", "DESIGN.md", "PAL.md", "DATASETS.md")
#: A citation: ``[KEY]`` or ``[KEY, locator]``, KEY of ≥ 3 characters, not an index (``x[...]``).
CITATION = re.compile(r"(?<![\w\[])\[([A-Z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*)(?:, [^\]\n]+)?\]")


def _scanned_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in SCANNED:
        files += [p for p in sorted((ROOT / folder).rglob("*")) if p.is_file()]
    # This checker names the old forms on purpose.
    skip = {Path(__file__).resolve()}
    return [p for p in files if p not in skip and "__pycache__" not in p.parts]


def _defined_keys() -> set[str]:
    text = REFERENCES.read_text(encoding="utf-8")
    table_rows = re.findall(r"^\| `([A-Z][A-Za-z0-9-]+)` \|", text, re.MULTILINE)
    headings = re.findall(r"^#+ .*?`([A-Z][A-Za-z0-9-]+)`", text, re.MULTILINE)
    return set(table_rows) | set(headings)


def _cited_keys(path: Path) -> set[str]:
    """Keys cited in the docstrings, strings and comments of a Python file (code such as
    ``dict[str, Any]`` or ``[None, None]`` is not prose and is not read)."""
    keys = set()
    for token in tokenize.generate_tokens(io.StringIO(path.read_text("utf-8")).readline):
        if token.type in (tokenize.STRING, tokenize.COMMENT) or token.type == getattr(
            tokenize, "FSTRING_MIDDLE", None
        ):
            keys |= {m.group(1) for m in CITATION.finditer(token.string) if len(m.group(1)) >= 3}
    return keys


def test_no_citation_points_outside_the_repository():
    found = []
    for path in _scanned_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:  # binary fixtures
            continue
        for number, line in enumerate(text.splitlines(), 1):
            found += [f"{path.relative_to(ROOT)}:{number}: {f}" for f in FORBIDDEN if f in line]
    assert not found, "cite a key of docs/references.md instead:\n" + "\n".join(found)


def test_every_key_cited_in_the_library_is_defined_in_references():
    defined = _defined_keys()
    assert {"MixDPO", "DAHP", "PAL", "DPO", "CVZ", "PRISM-FORMAT", "HH-FORMAT"} <= defined
    cited = {(key, str(p.relative_to(ROOT))) for p in sorted((ROOT / "pluralign").rglob("*.py"))
             for key in _cited_keys(p)}
    assert ("MixDPO", "pluralign/numerics.py") in cited  # (the scan reads what it should)
    undefined = sorted(f"{where}: [{key}" for key, where in cited if key not in defined)
    assert not undefined, "keys missing from docs/references.md:\n" + "\n".join(undefined)
