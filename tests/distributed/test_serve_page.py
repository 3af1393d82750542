"""The web chat in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, installed by
tests/setup/chromium.sh; nothing is downloaded at test time): a Chinese message streams its answer
in; compare mode streams two exports side by side with the names hidden, the vote reveals them and
lands in votes.jsonl, and ``python -m llama3zh_dist.serve.pairs`` turns it into one preference pair.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import httpx
import pytest
from conftest import SERVE_KEY, run_python

pytestmark = pytest.mark.slow

CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def browser(module_tmp):
    if not (Path(CHROMEDRIVER).exists() and shutil.which("chromium")):
        pytest.fail("chromium / chromium-driver missing: run tests/setup/chromium.sh (CI does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,900",
                 f"--user-data-dir={module_tmp('chromium-profile')}"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)  # no selenium-manager download
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def compare_server(quickstart_export, step80_export, module_tmp):
    from _serve_helpers import ServeProcess

    out = module_tmp("votes")
    server = ServeProcess([f"model.path={quickstart_export}", f"serve.compare={step80_export}",
                           f"serve.out_dir={out}"])
    yield server, out
    server.stop()


def _wait_for(driver, css: str):
    """Poll until ``css`` matches; an error shown by the page fails at once (no time limit here)."""
    from selenium.webdriver.common.by import By

    while True:
        found = driver.find_elements(By.CSS_SELECTOR, css)
        if found:
            return found
        status = driver.find_element(By.ID, "status")
        assert "error" not in (status.get_attribute("class") or ""), status.text
        time.sleep(0.1)


def _open(driver, url: str):
    driver.get(url)
    _wait_for(driver, "body[data-ready='1']")


def _send(driver, text: str, max_tokens: int = 48):
    from selenium.webdriver.common.by import By

    driver.execute_script(
        "var t = document.getElementById('temperature'); t.value = '0'; t.dispatchEvent(new Event('input'));"
        f"document.getElementById('max_tokens').value = '{max_tokens}';"
        # count how often answer text changes: a streamed answer arrives in many steps
        "window.__updates = 0; new MutationObserver(() => window.__updates++)"
        ".observe(document.getElementById('log'), {subtree: true, characterData: true, childList: true});")
    box = driver.find_element(By.ID, "input")
    box.send_keys(text)
    driver.find_element(By.ID, "send").click()


def test_page_streams_a_chinese_answer(browser, served, quickstart_export):
    from selenium.webdriver.common.by import By

    from llama3zh_dist.quickstart_check import quickstart_pairs

    question = quickstart_pairs()[0][0]
    _open(browser, served.base_url + "/")
    assert browser.find_element(By.ID, "keybox").is_displayed()  # this server wants the key
    browser.find_element(By.ID, "apikey").send_keys(SERVE_KEY)
    _send(browser, question)
    answer = _wait_for(browser, ".msg.assistant[data-done='1']")[0].text
    api = httpx.post(served.base_url + "/v1/chat/completions", headers={"Authorization": f"Bearer {SERVE_KEY}"},
                     json={"model": str(quickstart_export), "messages": [{"role": "user", "content": question}],
                           "temperature": 0, "max_tokens": 48, "top_p": 0.9}, timeout=None).json()
    assert answer == api["choices"][0]["message"]["content"].strip()
    assert sum("\u4e00" <= ch <= "\u9fff" for ch in answer) > 5
    assert browser.execute_script("return window.__updates") > 5  # arrived piece by piece
    assert browser.find_element(By.CSS_SELECTOR, ".msg.user").text == question


def test_compare_mode_hides_names_until_the_vote_and_the_vote_becomes_a_pair(
        browser, compare_server, quickstart_export, step80_export, tmp_path):
    from selenium.webdriver.common.by import By

    server, out = compare_server
    _open(browser, server.base_url + "/")
    assert "Compare" in browser.find_element(By.ID, "mode").text
    _send(browser, "你好，请介绍一下你自己。", max_tokens=32)
    _wait_for(browser, ".pair[data-done='1']")
    answers = {el.get_attribute("data-side"): el.text for el in browser.find_elements(By.CSS_SELECTOR, ".answer")}
    assert answers["a"] and answers["b"]
    page_text = browser.find_element(By.TAG_NAME, "body").text
    assert str(quickstart_export) not in page_text and str(step80_export) not in page_text  # hidden
    assert browser.execute_script("return window.__updates") > 5
    browser.find_element(By.CSS_SELECTOR, "button[data-vote='a']").click()
    _wait_for(browser, ".votes[data-voted='a']")
    heads = [h.text for h in browser.find_elements(By.CSS_SELECTOR, ".side h4")]
    revealed = {heads[0].split(": ", 1)[1], heads[1].split(": ", 1)[1]}
    assert revealed == {str(quickstart_export), str(step80_export)}
    shot = tmp_path / "compare.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000

    votes = [json.loads(x) for x in (out / "votes.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(votes) == 1
    v = votes[0]
    assert v["vote"] == "a" and v["messages"] == [{"role": "user", "content": "你好，请介绍一下你自己。"}]
    assert v["a"]["model"] == heads[0].split(": ", 1)[1] and v["b"]["model"] == heads[1].split(": ", 1)[1]
    assert v["a"]["answer"].strip() == answers["a"] and v["b"]["answer"].strip() == answers["b"]
    assert v["sampling"]["temperature"] == 0 and v["sampling"]["max_tokens"] == 32 and v["time"]

    proc = run_python(["-m", "llama3zh_dist.serve.pairs", f"serve.out_dir={out}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    pairs = [json.loads(x) for x in (out / "preference_pairs.jsonl").read_text(encoding="utf-8").splitlines()]
    assert pairs == [{"prompt": v["messages"], "chosen": [{"role": "assistant", "content": v["a"]["answer"]}],
                      "rejected": [{"role": "assistant", "content": v["b"]["answer"]}],
                      "chosen_model": v["a"]["model"], "rejected_model": v["b"]["model"]}]
