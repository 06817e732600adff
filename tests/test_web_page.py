"""Browser test of the web page at ``/``: a real server on a loopback port, driven by headless Debian chromium
through selenium + chromedriver. Skipped (with the reason) where selenium or chromium is missing."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

pytest.importorskip("fastapi", reason="the web page test needs the 'serve' extra (fastapi, uvicorn)")
uvicorn = pytest.importorskip("uvicorn", reason="the web page test needs the 'serve' extra (fastapi, uvicorn)")

import qatune  # noqa: E402
from qatune.serve import create_app  # noqa: E402

SAMPLE = Path(qatune.__file__).resolve().parent / "resources" / "sample"
CHROMIUM = os.environ.get("QATUNE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("QATUNE_CHROMEDRIVER", "/usr/bin/chromedriver")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1200,1000"]
# the emoji first: offsets are code points in Python, UTF-16 units in JavaScript; the page must convert
FOX = ("\U0001f98a Foxes live in forests and fields. A red fox can run at fifty kilometres per hour. "
       "The arctic fox grows white fur in winter and brown fur in summer. Foxes eat mice.")
KEY = "page-test-key"


def _browser_or_skip() -> tuple[Any, Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium); skipping the browser test")
    for path, what in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromedriver")):
        if not (Path(path).is_file() or shutil.which(path)):
            pytest.skip(f"{what} not found at {path} (apt-get install chromium chromium-driver); "
                        "skipping the browser test")
    return webdriver, Service


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    webdriver, Service = _browser_or_skip()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def run_dir(tiny_lora_run: Path) -> Path:
    return tiny_lora_run


@pytest.fixture(scope="module")
def pipeline(run_dir: Path) -> Any:
    return qatune.load(str(run_dir), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def server(pipeline: Any, run_dir: Path) -> Iterator[str]:
    """The app on a free 127.0.0.1 port in a thread, with an API key and a small context limit."""
    app = create_app(pipeline, run_dir=run_dir, api_key=KEY, max_context_chars=2000)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    srv.should_exit = True
    thread.join(30)
    sock.close()


def _ask(driver: Any, url: str, context: str, question: str, key: str | None = KEY, top_k: str = "1") -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver.get(url)
    driver.execute_script("sessionStorage.clear()")
    for field, value in (("context", context), ("question", question), ("api-key", key or "")):
        box = driver.find_element(By.ID, field)
        box.clear()
        if field == "context":  # typing 200 characters one by one is slow; set, then type one more
            driver.execute_script("arguments[0].value = arguments[1]", box, value[:-1])
            box.send_keys(value[-1])
        elif value:
            box.send_keys(value)
    Select(driver.find_element(By.ID, "top-k")).select_by_visible_text(top_k)
    driver.find_element(By.ID, "ask").click()


def _wait_visible(driver: Any, element_id: str) -> Any:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 30).until(EC.visibility_of_element_located((By.ID, element_id)))


def test_page_highlights_the_answer(browser: Any, server: str, pipeline: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    question = "What do foxes eat?"
    _ask(browser, server, FOX, question, top_k="3")
    _wait_visible(browser, "result")
    marks = browser.find_elements(By.CSS_SELECTOR, "#highlighted mark")
    expected = pipeline.answer(question, FOX, top_k=3)
    best = expected[0]
    assert len(marks) == 1
    assert marks[0].text == best.text  # the mark sits on the answer's offsets, after the emoji
    highlighted = browser.find_element(By.ID, "highlighted").text
    assert highlighted.replace("\n", " ") == FOX.replace("\n", " ")
    assert browser.find_element(By.ID, "answer-text").text == best.text
    score = browser.find_element(By.ID, "score")
    assert score.text == f"{100 * best.score:.1f}%"
    assert float(score.get_attribute("data-score")) == pytest.approx(best.score, rel=1e-4)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#alternatives li")) == len(expected) - 1
    from selenium.webdriver.support.ui import WebDriverWait

    # with the key entered, the model line fills in (it said a key is needed at page load)
    WebDriverWait(browser, 30).until(lambda d: "method lora" in d.find_element(By.ID, "model").text)
    shot = tmp_path / "qatune-page.png"
    assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 1000
    print(f"screenshot: {shot}")


def test_page_shows_server_errors(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By

    _ask(browser, server, "Foxes live in forests. " * 100, "Where do foxes live?")  # over the 2000-char limit
    error = _wait_visible(browser, "error")
    assert "413" in error.text and "--max-context-chars" in error.text
    assert not browser.find_element(By.ID, "result").is_displayed()

    _ask(browser, server, FOX, "Where do foxes live?", key="wrong-key")
    error = _wait_visible(browser, "error")
    assert "401" in error.text and "API key" in error.text


def test_page_loads_without_a_key_and_says_one_is_needed(browser: Any, server: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    browser.execute_script("sessionStorage.clear()")
    browser.get(server)
    WebDriverWait(browser, 30).until(lambda d: "API key" in d.find_element(By.ID, "model").text)
    logs = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE" and e.get("source") != "network"]
    assert logs == [], logs  # no script errors, nothing blocked by the page's CSP (4xx answers are expected)
