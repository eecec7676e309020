"""Files and folders -> Documents, streamed.

    for doc in load_documents(["notes/", "README.md"], on_skip=print):
        ...

Supported: .txt, .md/.markdown (as is), .html/.htm (visible text via the stdlib html.parser, without
script/style), .pdf (the text of each page, via pypdf), .json (an object or a list of objects) and .jsonl
(one object per line). JSON records give their text in "text" (prefixed by "title" when present) and their
id in "id" or "_id"; a PDF gives one document per page with text, id "<path>#page=<n>" (n from 1, the
fragment a PDF viewer opens at), so a chunk, a hit and a citation name their page; other files are one
document whose id is the path relative to the folder given (or the file name for a file given directly).
Metadata: "source" (that relative path) and "file_type", plus the scalar fields of JSON records (and of a
nested "metadata" object, as in BEIR corpora), and "page" / "page_count" (and "title", when the PDF has one)
of PDF pages. A chunk's hit carries its document's metadata, so every chunk of a PDF knows its page.

Unsupported files, empty files, records without text and PDFs that cannot be read or hold no extractable
text (a scan needs OCR first) are skipped and reported to on_skip (unsupported files as their path; other
skips as "path (reason)"): one bad file never stops a batch. Hidden files and folders (names starting with
".") are ignored.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from retrieval.types import Document

TEXT_TYPES = {".txt": "txt", ".md": "md", ".markdown": "md"}
HTML_TYPES = {".html": "html", ".htm": "html"}
JSON_TYPES = {".json": "json", ".jsonl": "jsonl"}
PDF_TYPES = {".pdf": "pdf"}
SUPPORTED = {**TEXT_TYPES, **HTML_TYPES, **JSON_TYPES, **PDF_TYPES}

OnSkip = Callable[[str], None]


def _as_paths(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(p) for p in paths]


def _hidden(rel: Path) -> bool:
    return any(part.startswith(".") for part in rel.parts)


def iter_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Iterator[tuple[Path, Path]]:
    """(file, root) for every file under `paths`, folders walked in sorted order; root is the
    folder ids are relative to."""
    for p in _as_paths(paths):
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in sorted(filenames):
                    if not name.startswith("."):
                        yield Path(dirpath) / name, p
        elif p.is_file():
            yield p, p.parent
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")


def count_files(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> int:
    """Supported files under `paths` (a progress bar's total)."""
    return sum(1 for f, _ in iter_files(paths) if f.suffix.lower() in SUPPORTED)


def load_documents(
    paths: str | os.PathLike | Iterable[str | os.PathLike], on_skip: OnSkip | None = None
) -> Iterator[Document]:
    """Documents from files and folders, one file at a time (JSON lines one record at a time)."""
    skip = on_skip or (lambda _msg: None)
    for path, root in iter_files(paths):
        yield from load_file(path, root, skip)


def relative_name(path: Path, root: Path) -> str:
    """A file's id and "source": its path relative to the folder given (or as given, outside it)."""
    return path.relative_to(root).as_posix() if path.is_relative_to(root) else path.as_posix()


def load_file(
    path: str | os.PathLike, root: str | os.PathLike | None = None, on_skip: OnSkip | None = None
) -> Iterator[Document]:
    """Documents of one file; ids and "source" are relative to root (default: the file's folder)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    skip = on_skip or (lambda _msg: None)
    rel = relative_name(path, root)
    ext = path.suffix.lower()
    if ext not in SUPPORTED:
        skip(rel)
        return
    file_type = SUPPORTED[ext]
    base_meta = {"source": rel, "file_type": file_type}
    if ext in JSON_TYPES:
        yield from _json_documents(path, rel, file_type, base_meta, skip)
        return
    if ext in PDF_TYPES:
        yield from pdf_documents(path, rel, base_meta, skip)
        return
    raw = path.read_text(encoding="utf-8-sig", errors="replace")
    meta = dict(base_meta)
    if ext in HTML_TYPES:
        title, text = html_to_text(raw)
        if title:
            meta["title"] = title
    else:
        text = raw
    if not text.strip():
        skip(f"{rel} (no text)")
        return
    yield Document(id=rel, text=text, metadata=meta, source=rel)


# --- JSON ----------------------------------------------------------------------------------------


def _is_scalar(v: Any) -> bool:
    return isinstance(v, (str, int, float, bool)) and not (isinstance(v, float) and v != v)


def record_to_document(rec: dict[str, Any], default_id: str, base_meta: dict[str, Any], source: str) -> Document | None:
    """A JSON record -> Document (None when it has no text). Text: "title" + blank line + "text"."""
    text = rec.get("text")
    if not isinstance(text, str) or not text.strip():
        return None
    title = rec.get("title")
    if isinstance(title, str) and title.strip():
        text = f"{title.strip()}\n\n{text}"
    rid = rec.get("id", rec.get("_id"))
    doc_id = str(rid) if _is_scalar(rid) and str(rid) != "" else default_id
    meta: dict[str, Any] = {}
    nested = rec.get("metadata")
    if isinstance(nested, dict):
        meta.update({k: v for k, v in nested.items() if isinstance(k, str) and _is_scalar(v)})
    meta.update({k: v for k, v in rec.items() if k not in ("id", "_id", "text", "metadata") and _is_scalar(v)})
    meta.update(base_meta)  # the loader's own fields win: they say where the record came from
    return Document(id=doc_id, text=text, metadata=meta, source=source)


def json_records(
    path: Path, rel: str, file_type: str, base_meta: dict[str, Any], skip: OnSkip
) -> Iterator[tuple[Any, str, dict[str, Any], str]]:
    """(record, default id, metadata, where) of every parsed record of a .json/.jsonl file; lines that are
    not JSON are reported to skip. Shared with the trainer (llm.train.corpus), which reads chat records from them."""
    if file_type == "jsonl":
        with open(path, encoding="utf-8-sig", errors="replace") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    skip(f"{rel}:{lineno} (invalid JSON: {exc.msg})")
                    continue
                yield rec, f"{rel}#{lineno}", {**base_meta, "line": lineno}, f"{rel}:{lineno}"
        return
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig", errors="replace"))
    except json.JSONDecodeError as exc:
        skip(f"{rel} (invalid JSON: {exc.msg})")
        return
    if isinstance(data, list):
        for i, rec in enumerate(data):
            yield rec, f"{rel}#{i}", {**base_meta, "position": i}, f"{rel}[{i}]"
    else:
        yield data, rel, base_meta, rel


def _json_documents(
    path: Path, rel: str, file_type: str, base_meta: dict[str, Any], skip: OnSkip
) -> Iterator[Document]:
    for rec, default_id, meta, where in json_records(path, rel, file_type, base_meta, skip):
        yield from _record(rec, default_id, meta, rel, where, skip)


def _record(
    rec: Any, default_id: str, meta: dict[str, Any], source: str, where: str, skip: OnSkip
) -> Iterator[Document]:
    if not isinstance(rec, dict):
        skip(f"{where} (not a JSON object)")
        return
    doc = record_to_document(rec, default_id, meta, source)
    if doc is None:
        skip(f'{where} (no "text" field)')
        return
    yield doc


# --- PDF -----------------------------------------------------------------------------------------

PDF_NO_TEXT = "no extractable text: a scanned PDF needs OCR first"


def pdf_documents(path: Path, rel: str, base_meta: dict[str, Any], skip: OnSkip) -> Iterator[Document]:
    """One document per PDF page that has text; a PDF that cannot be read, or has no text at all, is reported to
    skip as "rel (reason)". Pages are read before anything is yielded, so a file fails whole or not at all."""
    try:
        pages, title = pdf_pages(path)
    except Exception as exc:  # a third-party parser on untrusted bytes: any failure is this file's, not the batch's
        skip(f"{rel} (not a readable PDF: {type(exc).__name__}: {exc})")
        return
    if not any(text.strip() for text in pages):
        skip(f"{rel} ({PDF_NO_TEXT})")
        return
    for number, text in enumerate(pages, start=1):
        if text.strip():  # blank pages (covers, separators) are no documents
            meta = {**base_meta, "page": number, "page_count": len(pages)}
            if title:
                meta["title"] = title
            yield Document(id=f"{rel}#page={number}", text=text, metadata=meta, source=rel)


def pdf_pages(path: Path) -> tuple[list[str], str]:
    """(text of each page, the document's title or ""). Raises whatever pypdf raises for a broken or encrypted
    file (an empty user password is tried, as viewers do)."""
    from pypdf import PdfReader  # imported with the first PDF: plain-text ingestion never pays for it

    reader = PdfReader(path)
    if reader.is_encrypted and not reader.decrypt(""):
        raise ValueError("the PDF is encrypted with a password")
    pages = [page.extract_text() or "" for page in reader.pages]
    info = reader.metadata
    title = info.title if info is not None and isinstance(info.title, str) else ""
    return pages, " ".join(title.split())


# --- HTML ----------------------------------------------------------------------------------------

_SKIP_TAGS = {"script", "style", "noscript", "template", "svg"}
_BLOCK_TAGS = {
    "address",
    "article",
    "aside",
    "blockquote",
    "dd",
    "div",
    "dl",
    "dt",
    "fieldset",
    "figcaption",
    "figure",
    "footer",
    "form",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "tr",
    "ul",
    "title",
    "caption",
    "details",
    "summary",
}
_SPACES = re.compile(r"[ \t\r\f\v\n]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _TextExtractor(HTMLParser):
    """Visible text of an HTML page: blocks become paragraphs, <br> a line break."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth += 1
        elif tag == "br":
            self.parts.append("\n")
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")
        if tag == "pre":
            self._pre_depth += 1
        if tag == "title":
            self._in_title = True

    def handle_startendtag(self, tag: str, attrs) -> None:
        if tag == "br":
            self.parts.append("\n")
        elif tag == "hr":
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n\n")
        if tag == "pre":
            self._pre_depth = max(0, self._pre_depth - 1)
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._in_title:
            self.title.append(data)
        self.parts.append(data if self._pre_depth else _SPACES.sub(" ", data))


def html_to_text(html: str) -> tuple[str, str]:
    """(title, visible text) of an HTML page; script, style and similar are dropped."""
    p = _TextExtractor()
    p.feed(html)
    p.close()
    text = "".join(p.parts)
    # Collapsed whitespace leaves one space at the edges of blocks; <pre> indentation (2+ spaces) stays.
    lines = [line.rstrip() for line in text.split("\n")]
    lines = [line[1:] if line.startswith(" ") and not line.startswith("  ") else line for line in lines]
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()
    title = " ".join("".join(p.title).split())
    return title, text
