"""The 3D viewer in a real browser: Debian's Chromium (headless, WebGL through SwiftShader) driven by
selenium against a real 'tomeray serve' process over a 'tomeray reconstruct' output of opencv-doc
chessboard views. The scenes page asks for the token, a scene opens in the viewer, its points load
and are drawn (a screenshot is saved; its canvas is not blank), the shown count equals the served
X-Points-Count, and the confidence slider filters points on the client."""

from __future__ import annotations

import io
from urllib.parse import quote

import numpy as np
import pytest
import requests
from PIL import Image
from serving import TOKEN
from test_serve_browser import CHROMIUM_FLAGS, js, start_chromium, wait

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SCENE = "chess board"
BACKGROUND = np.array([0x0F, 0x12, 0x17])  # the viewer's clear colour
# WebGL without a GPU: SwiftShader, which Chromium only enables when asked
WEBGL_FLAGS = [f for f in CHROMIUM_FLAGS if f != "--disable-gpu"] + ["--use-angle=swiftshader",
                                                                     "--enable-unsafe-swiftshader"]


@pytest.fixture
def webgl_browser(tmp_path):
    session = start_chromium(tmp_path, WEBGL_FLAGS)
    yield session
    session.quit()


@pytest.fixture(scope="module")
def viewer_server(served_recon):
    from tomeray.jobs.bench_serve import Server

    with Server([str(served_recon), "--port", "0", "--token", TOKEN], timeout=300) as process:
        yield process


def canvas_pixels(driver) -> int:
    """How many pixels of the viewer's canvas differ from its background colour."""
    from selenium.webdriver.common.by import By

    png = driver.find_element(By.ID, "canvas").screenshot_as_png
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
    return int((np.abs(rgb - BACKGROUND).sum(axis=2) > 24).sum())


def shown(driver) -> int:
    return int(js(driver, "return document.getElementById('shown').dataset.shown || -1"))


def test_browser_viewer_draws_the_points_and_filters_by_confidence(webgl_browser, viewer_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser = webgl_browser
    browser.get(viewer_server.url + "/")  # a server of scenes only: its home is the scenes page
    wait(browser, lambda d: d.find_element(By.ID, "token-form").is_displayed(), message="no token prompt")
    browser.find_element(By.ID, "token").send_keys(TOKEN + Keys.ENTER)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".scene-card img"), message="no scene cards")
    wait(browser, lambda d: js(d, "const i = document.querySelector('.scene-card img');"
                                  "return i.complete && i.naturalWidth > 0"), message="no scene thumbnail")
    card = browser.find_element(By.CSS_SELECTOR, ".scene-card")
    assert card.get_attribute("data-scene") == SCENE and "RANDOM" in card.text
    card.click()

    wait(browser, lambda d: js(d, "return document.body.dataset.points === 'loaded'"),
         message="points not loaded")
    assert browser.current_url.endswith("/scenes/" + quote(SCENE, safe=""))
    assert not browser.find_element(By.ID, "error").is_displayed()
    banner = browser.find_element(By.ID, "weights-banner")
    assert banner.is_displayed() and "RANDOM" in banner.text
    screenshot = tmp_path / "viewer.png"
    browser.save_screenshot(str(screenshot))
    print(f"screenshot: {screenshot}")
    drawn = canvas_pixels(browser)
    assert drawn > 200, f"the canvas is blank ({drawn} pixels differ from the background)"

    served = requests.get(f"{viewer_server.url}/api/scenes/{quote(SCENE, safe='')}/points", headers=AUTH,
                          timeout=60)
    count, total = int(served.headers["X-Points-Count"]), int(served.headers["X-Points-Total"])
    assert shown(browser) == count
    assert f"{count:,} of {total:,} points shown" in browser.find_element(By.ID, "shown").text

    slider = browser.find_element(By.ID, "confidence")
    js(browser, "arguments[0].value = 60; arguments[0].dispatchEvent(new Event('input'))", slider)
    fewer = shown(browser)
    assert 0 < fewer < count
    assert abs(fewer - 0.4 * count) <= 0.02 * count + 1  # the 60th percentile of the served confidences
    browser.save_screenshot(str(tmp_path / "viewer-filtered.png"))
    assert canvas_pixels(browser) > 0

    # point size and "fit to scene" redraw without a new request for the points
    browser.find_element(By.ID, "fit").click()
    js(browser, "arguments[0].value = 6; arguments[0].dispatchEvent(new Event('input'))",
       browser.find_element(By.ID, "size"))
    assert canvas_pixels(browser) >= drawn * 0.5
    loads = js(browser, "return performance.getEntriesByType('resource')"
                        ".filter(e => e.name.includes('/points')).length")
    assert loads == 1


@pytest.fixture(scope="module")
def hit_viewer_server(served_index, tmp_path_factory):
    from tomeray.jobs.bench_serve import Server

    out = tmp_path_factory.mktemp("browser-hits") / "recon"
    options = ["--port", "0", "--token", TOKEN, "server.torch_threads=1", "inference.device=cpu",
               f"recon.out={out}", "recon.model.arch=vggt-tiny", "recon.model.pretrained=none",
               "recon.views=3"]
    with Server([str(served_index), *options], timeout=300) as process:
        yield process


def test_browser_viewer_opens_a_search_hit_in_3d(webgl_browser, hit_viewer_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser = webgl_browser
    browser.get(hit_viewer_server.url + "/")
    wait(browser, lambda d: js(d, "return document.getElementById('token-dialog').open"),
         message="no token prompt")
    browser.find_element(By.ID, "token").send_keys(TOKEN + Keys.ENTER)
    wait(browser, lambda d: js(d, "return document.body.dataset.ready === '1'"), message="page not ready")
    assert browser.find_element(By.ID, "scenes-tab").is_displayed()
    browser.find_element(By.ID, "q").send_keys("people walking" + Keys.ENTER)
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#results .card .in-3d"), message="no 3D action")
    card = browser.find_elements(By.CSS_SELECTOR, "#results .card")[0]
    video_id = card.get_attribute("data-video-id")
    card.find_element(By.CSS_SELECTOR, ".in-3d").click()

    wait(browser, lambda d: "/scenes/" in d.current_url, seconds=280, message="the viewer did not open")
    wait(browser, lambda d: js(d, "return document.body.dataset.points === 'loaded'"),
         message="points not loaded")
    assert f"/scenes/{video_id}_" in browser.current_url
    browser.save_screenshot(str(tmp_path / "hit-viewer.png"))
    assert shown(browser) > 0 and canvas_pixels(browser) > 0
    assert "RANDOM" in browser.find_element(By.ID, "weights-banner").text
