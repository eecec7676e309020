"""The web console in a real headless browser: Debian's chromium driven by selenium through chromedriver, against a
real server on port 0. It creates a collection, ingests a dropped file and a chosen PDF (with progress), asks a
question and sees the answer stream in, opens a citation (the cited span shown in its document), and searches.

`make test` installs chromium and chromium-driver when they are missing and it runs as root (as CI does); where
neither is possible this test skips and says why."""

from __future__ import annotations

import shutil

import pytest

from tests.pdf_fixtures import make_pdf
from tests.service.conftest import RAG_DOCS
from tests.service.http.conftest import base_url

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is a dev dependency: pip install -e '.[dev]'")
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")

# Set before the answer starts: true once answer text is on the page while the answer is still streaming.
WATCH_STREAMING = """
window.sawPartialAnswer = false;
new MutationObserver(() => {
  const m = document.querySelector(".message.assistant");
  if (m && m.dataset.done === "false" && m.querySelector(".text").textContent.length > 0) window.sawPartialAnswer = true;
}).observe(document.getElementById("messages"), {subtree: true, childList: true, characterData: true, attributes: true});
"""

DROP_FILE = """
const data = new DataTransfer();
data.items.add(new File([arguments[0]], "notes.md", {type: "text/markdown"}));
document.getElementById("dropzone").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
"""


@pytest.fixture
def browser():
    if CHROMIUM is None or CHROMEDRIVER is None:
        pytest.skip("no chromium/chromedriver: `make test` installs Debian's chromium and chromium-driver as root")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def rows(driver) -> dict[str, list[str]]:
    """The collections table, name -> [documents, chunks, index state], read in one go (it is re-rendered)."""
    cells = driver.execute_script(
        "return [...document.querySelectorAll('#collections tbody tr')].map(tr => [...tr.cells].map(td => td.textContent))"
    )
    return {row[0]: row[1:] for row in cells}


def click_collection(driver, name: str) -> None:
    driver.execute_script(f"document.querySelector('#collections tbody tr[data-name={name}]').click()")


def test_console_ingests_asks_streams_and_opens_a_citation(browser, http_server, tmp_path):
    wait = WebDriverWait(browser, 60)
    browser.get(base_url(http_server) + "/")
    wait.until(lambda d: "kb" in rows(d))
    assert rows(browser)["kb"][0] == str(len(RAG_DOCS))  # documents
    wait.until(lambda d: d.find_element(By.ID, "status").text == "serving")

    # A new collection, then a dropped file and a chosen PDF, each with its progress and result.
    browser.find_element(By.ID, "create-name").send_keys("console\n")
    wait.until(
        lambda d: "console" in rows(d) and d.find_element(By.CSS_SELECTOR, ".current-collection").text == "console"
    )
    browser.execute_script(DROP_FILE, "# Notes\n\nPumice floats on water.")
    pdf = tmp_path / "rocks.pdf"
    pdf.write_bytes(make_pdf(["Basalt is a volcanic rock.", "Obsidian is volcanic glass."]))
    browser.find_element(By.ID, "file-input").send_keys(str(pdf))
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#uploads li[data-state=done]")) == 2)
    results = [li.text for li in browser.find_elements(By.CSS_SELECTOR, "#uploads li")]
    assert any(r.startswith("rocks.pdf") and "2 documents" in r for r in results), results
    assert all(bar.get_attribute("value") == "1" for bar in browser.find_elements(By.CSS_SELECTOR, "#uploads progress"))
    wait.until(lambda d: rows(d)["console"][0] == "3")

    # Ask over "kb": the answer streams in, its citations come first, and one opens on its span.
    click_collection(browser, "kb")
    browser.execute_script(WATCH_STREAMING)
    browser.find_element(By.ID, "question").send_keys("What makes sourdough bread rise?\n")
    answer = browser.find_element(By.CSS_SELECTOR, ".message.assistant")
    wait.until(lambda d: answer.get_attribute("data-done") == "true")
    assert not answer.find_elements(By.CSS_SELECTOR, ".text.error"), answer.text
    assert browser.execute_script("return window.sawPartialAnswer") is True
    assert int(answer.get_attribute("data-chunks")) > 1
    citations = answer.find_elements(By.CSS_SELECTOR, "ol.citations a.cite")
    assert citations and citations[0].text == "[1] bread"
    citations[0].click()
    wait.until(lambda d: d.find_element(By.ID, "viewer").is_displayed())
    assert browser.find_element(By.ID, "viewer-title").text == "bread"
    assert browser.find_element(By.ID, "span").text == RAG_DOCS[1]["text"]

    # Search "console": hits with the query's words highlighted; a hit opens its page of the PDF.
    browser.find_element(By.CSS_SELECTOR, ".tabs [data-tab=search]").click()
    click_collection(browser, "console")
    browser.find_element(By.ID, "query").send_keys("volcanic glass\n")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#hits li"))
    first = browser.find_element(By.CSS_SELECTOR, "#hits li")
    assert first.find_element(By.CSS_SELECTOR, "a.doc").text == "rocks.pdf#page=2"
    assert [m.text.lower() for m in first.find_elements(By.TAG_NAME, "mark")] == ["volcanic", "glass"]
    first.find_element(By.CSS_SELECTOR, "a.doc").click()
    wait.until(lambda d: d.find_element(By.ID, "viewer-title").text == "rocks.pdf#page=2")
    assert browser.find_element(By.ID, "span").text.strip() == "Obsidian is volcanic glass."
