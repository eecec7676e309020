import json
import types

import pytest

from retrieval.loaders import PDF_NO_TEXT, count_files, html_to_text, load_documents, load_file
from tests.pdf_fixtures import make_pdf

HTML = """<!doctype html><html><head><title>The  Page</title>
<style>body { color: red }</style><script>var secret = "do not index";</script></head>
<body><h1>Heading</h1><p>First &amp; <b>bold</b>
   paragraph.</p><noscript>enable js</noscript><pre>def f():
    return 1</pre><ul><li>one</li><li>two</li></ul>line<br>break</body></html>"""


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("Plain text file.\n", encoding="utf-8")
    (root / "sub" / "b.md").write_text("# Title\n\nSome *markdown*.", encoding="utf-8")
    (root / "sub" / "deeper" / "page.html").write_text(HTML, encoding="utf-8")
    (root / "empty.txt").write_text("  \n", encoding="utf-8")
    (root / "image.png").write_bytes(b"\x89PNG")
    (root / "notes.pdf").write_bytes(b"%PDF")  # a header and nothing else: not readable
    (root / ".hidden.txt").write_text("hidden", encoding="utf-8")
    (root / ".git" / "config.txt").write_text("git internals", encoding="utf-8")
    records = [
        {"_id": "beir-1", "title": "Doc One", "text": "Body one.", "metadata": {"year": 2020, "x": [1]}, "lang": "en"},
        {"id": 7, "text": "Body seven.", "score": 0.5, "ok": True, "tags": ["t"], "nothing": None},
        {"title": "no text here"},
        {"text": "No id, uses the line."},
    ]
    lines = [json.dumps(r) for r in records]
    lines.insert(2, "{not json")
    lines.insert(3, "")
    (root / "corpus.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (root / "list.json").write_text(
        json.dumps([{"text": "first"}, {"text": "second", "id": "L2"}, 3]), encoding="utf-8"
    )
    (root / "one.json").write_text(json.dumps({"text": "single object", "kind": "note"}), encoding="utf-8")
    (root / "bad.json").write_text("{", encoding="utf-8")
    return root


def test_folder_is_streamed_into_documents(tree):
    skipped: list[str] = []
    gen = load_documents(tree, on_skip=skipped.append)
    assert isinstance(gen, types.GeneratorType)  # streamed, not a list
    docs = {d.id: d for d in gen}
    assert sorted(docs) == sorted(
        [
            "a.txt",
            "sub/b.md",
            "sub/deeper/page.html",
            "beir-1",
            "7",
            "corpus.jsonl#6",
            "list.json#0",
            "L2",
            "one.json",
        ]
    )
    assert docs["a.txt"].text == "Plain text file.\n"
    assert docs["a.txt"].metadata == {"source": "a.txt", "file_type": "txt"}
    assert docs["sub/b.md"].source == "sub/b.md" and docs["sub/b.md"].metadata["file_type"] == "md"

    page = docs["sub/deeper/page.html"]
    assert page.metadata == {"source": "sub/deeper/page.html", "file_type": "html", "title": "The Page"}
    assert "Heading" in page.text and "First & bold paragraph." in page.text
    assert "secret" not in page.text and "color" not in page.text and "enable js" not in page.text

    beir = docs["beir-1"]
    assert beir.text == "Doc One\n\nBody one."
    assert beir.metadata == {
        "year": 2020,
        "lang": "en",
        "title": "Doc One",
        "source": "corpus.jsonl",
        "file_type": "jsonl",
        "line": 1,
    }
    seven = docs["7"]
    assert seven.metadata == {"score": 0.5, "ok": True, "source": "corpus.jsonl", "file_type": "jsonl", "line": 2}
    assert docs["corpus.jsonl#6"].text == "No id, uses the line."
    assert docs["list.json#0"].metadata["position"] == 0 and docs["L2"].text == "second"
    assert docs["one.json"].metadata == {"kind": "note", "source": "one.json", "file_type": "json"}

    # Unsupported files are reported by path, other skips with a reason; hidden entries are ignored.
    assert "image.png" in skipped
    reasons = [s for s in skipped if " (" in s and not s.startswith("notes.pdf (not a readable PDF: ")]
    assert sorted(reasons) == sorted(
        [
            "empty.txt (no text)",
            "corpus.jsonl:3 (invalid JSON: Expecting property name enclosed in double quotes)",
            'corpus.jsonl:5 (no "text" field)',
            "list.json[2] (not a JSON object)",
            "bad.json (invalid JSON: Expecting property name enclosed in double quotes)",
        ]
    )
    assert not any("hidden" in s or ".git" in s for s in skipped)


def test_count_files_and_several_paths(tree):
    # 9 supported files (hidden ones excluded, empty.txt, bad.json and notes.pdf still count as files).
    assert count_files(tree) == 9
    assert count_files([tree / "a.txt", tree / "sub"]) == 3
    docs = list(load_documents([tree / "a.txt", str(tree / "sub")]))
    # A file given directly is named relative to its folder; a folder's files relative to it.
    assert [d.id for d in docs] == ["a.txt", "b.md", "deeper/page.html"]
    with pytest.raises(FileNotFoundError):
        list(load_documents(tree / "nope"))


def test_load_file_reports_unsupported(tree):
    skipped = []
    assert list(load_file(tree / "image.png", tree, skipped.append)) == []
    assert skipped == ["image.png"]


def test_pdf_gives_a_document_per_page_with_its_page_number(tmp_path):
    (tmp_path / "docs").mkdir()
    pdf = tmp_path / "docs" / "geo.pdf"
    pdf.write_bytes(make_pdf(["Volcanoes erupt (often).\nLava flows.", "", "Saturn has rings."], title="Geo  Notes"))
    skipped: list[str] = []
    docs = list(load_documents(tmp_path / "docs", on_skip=skipped.append))
    assert skipped == []  # a blank page is no document, and no error
    assert [d.id for d in docs] == ["geo.pdf#page=1", "geo.pdf#page=3"]
    assert docs[0].text.split("\n")[:2] == ["Volcanoes erupt (often).", "Lava flows."]
    assert docs[1].text.strip() == "Saturn has rings."
    meta = {"source": "geo.pdf", "file_type": "pdf", "page_count": 3, "title": "Geo Notes"}
    assert docs[0].metadata == {**meta, "page": 1} and docs[1].metadata == {**meta, "page": 3}
    assert {d.source for d in docs} == {"geo.pdf"}


def test_a_pdf_without_text_or_unreadable_is_reported_and_the_batch_goes_on(tmp_path):
    (tmp_path / "a-scan.pdf").write_bytes(make_pdf(["", ""]))
    (tmp_path / "b-broken.pdf").write_bytes(b"%PDF-1.4 truncated")
    (tmp_path / "c.txt").write_text("after the bad PDFs")
    (tmp_path / "d.pdf").write_bytes(make_pdf(["fine"]))
    skipped: list[str] = []
    docs = list(load_documents(tmp_path, on_skip=skipped.append))
    assert [d.id for d in docs] == ["c.txt", "d.pdf#page=1"]
    assert skipped[0] == f"a-scan.pdf ({PDF_NO_TEXT})" and "OCR" in skipped[0]
    assert skipped[1].startswith("b-broken.pdf (not a readable PDF: ") and len(skipped) == 2


def test_html_to_text_keeps_blocks_and_pre():
    title, text = html_to_text(HTML)
    assert title == "The Page"
    assert (
        text == "The Page\n\nHeading\n\nFirst & bold paragraph.\n\ndef f():\n    return 1\n\none\n\ntwo\n\nline\nbreak"
    )
