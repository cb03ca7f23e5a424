"""The search page in a real browser: Debian's Chromium (headless) driven by selenium against a real
'tomeray serve' process. The page asks for the token once, a query shows hits whose thumbnails have
loaded, a click plays the clip from its start and stops at its end, and "more like this" searches
again. Screenshots are saved under the test's tmp dir (their paths are printed)."""

from __future__ import annotations

import shutil

import pytest
import requests
from serving import SEGMENT_S, TOKEN, WEBM

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

CHROMIUM_FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1360,900",
                  "--autoplay-policy=no-user-gesture-required", "--mute-audio"]


def start_chromium(tmp_path, flags=CHROMIUM_FLAGS):
    """Debian's Chromium driven by selenium, with a profile under ``tmp_path`` (the caller quits it)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.fail("the browser tests need Debian's chromium and chromium-driver: run .ci/install.sh "
                    "(or apt-get install -y chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in [*flags, f"--user-data-dir={tmp_path / 'chromium-profile'}"]:
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(60)
    return session


@pytest.fixture
def browser(tmp_path):
    session = start_chromium(tmp_path)
    yield session
    session.quit()


def wait(driver, condition, seconds=60, message=""):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.1).until(condition, message)


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def test_browser_search_thumbnails_playback_and_more_like_this(browser, server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(server.url + "/")
    # the API needs the token: the page asks for it once
    wait(browser, lambda d: js(d, "return document.getElementById('token-dialog').open"),
         message="no token prompt")
    browser.find_element(By.ID, "token").send_keys(TOKEN + Keys.ENTER)
    wait(browser, lambda d: js(d, "return document.body.dataset.ready === '1'"), message="page not ready")
    banner = browser.find_element(By.ID, "weights-banner")
    assert banner.is_displayed() and "RANDOM" in banner.text

    box = browser.find_element(By.ID, "q")
    box.send_keys("people walking" + Keys.ENTER)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card"), message="no hits")
    wait(browser, lambda d: js(d, """const imgs = [...document.querySelectorAll('#results .card img')];
        return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);"""),
         message="thumbnails did not load")
    cards = browser.find_elements(By.CSS_SELECTOR, "#results .card")
    rows = requests.get(server.url + "/api/stats", headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=60).json()["rows"]
    assert len(cards) == rows  # every row of the small index fits on the first page
    grid = tmp_path / "browser-grid.png"
    browser.save_screenshot(str(grid))
    print(f"screenshot: {grid}")

    # the WebM's second segment: it must play from 4 s and stop at 8 s
    start_label = f"0:0{int(SEGMENT_S)}.0"
    target = [c for c in cards if WEBM in c.text and start_label in c.text]
    assert target, [c.text for c in cards]
    target[0].find_element(By.CSS_SELECTOR, ".thumb").click()
    wait(browser, lambda d: js(d, "const v = document.getElementById('video'); "
                                  "return !v.paused && v.readyState >= 2 && v.currentTime > 0;"),
         message="the video did not start")
    position = js(browser, "return document.getElementById('video').currentTime")
    assert SEGMENT_S - 0.05 <= position < 2 * SEGMENT_S, position
    wait(browser, lambda d: js(d, "return document.getElementById('video').paused"), seconds=30,
         message="the segment did not stop at its end")
    stopped = js(browser, "return document.getElementById('video').currentTime")
    assert 2 * SEGMENT_S - 0.6 <= stopped <= 2 * SEGMENT_S + 0.05, stopped
    player = tmp_path / "browser-player.png"
    browser.save_screenshot(str(player))
    print(f"screenshot: {player}")

    # more like this, from the player
    browser.find_element(By.ID, "player-like").click()
    wait(browser, lambda d: "more like" in d.find_element(By.ID, "status").text,
         message="no 'more like' search")
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card"))
    assert "like=" in browser.current_url
    assert not js(browser, "return document.getElementById('player').open")
