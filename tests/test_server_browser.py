"""The dashboard in a real browser: headless Chromium (Debian's chromium + chromium-driver)
driven by selenium loads the page of a server with a few events; the arms table and the
reward curve must be rendered. Skipped, saying why, where Chromium is absent."""
import shutil

import httpx
import pytest

from server_helpers import running_server
from store import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None or DRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install -y chromium chromium-driver)")


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1200,1600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_dashboard_renders_arms_and_curve(tmp_path, browser):
    from selenium.webdriver.common.by import By

    db = str(tmp_path / "s.db")
    with running_server(db) as url:
        with httpx.Client(base_url=url) as http:
            for i in range(10):
                p = http.post("/v1/propose", json={"task": "t", "context": {"a": i / 10}, "seed": i}).json()
                if i < 8:
                    http.post(f"/v1/events/{p['event_id']}/reward", json={"value": (i % 4) / 4})
        browser.get(url + "/")
        rows = browser.find_elements(By.CSS_SELECTOR, "#arms tbody tr")
        with Store(db) as st:
            arms = [a["name"] for a in st.arms()]
        assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows] == arms
        curve = browser.find_element(By.ID, "curve")
        assert curve.size["width"] > 300 and curve.size["height"] > 100
        lines = browser.find_elements(By.CSS_SELECTOR, "#curve polyline.series")
        assert len(lines) == 3
        # the policy's and random's lines: one point per reward, drawn across the plot; the
        # best fixed arm's starts at its first pull
        for line in lines:
            points = line.get_attribute("points").split()
            name = line.get_attribute("data-name")
            if name.startswith("best fixed arm"):
                assert 1 <= len(points) <= 8
                continue
            assert len(points) == 8, name
            box = browser.execute_script("const b = arguments[0].getBBox(); return [b.width, b.height];", line)
            assert box[0] > 100
        assert len(browser.find_elements(By.CSS_SELECTOR, "#events tbody tr")) == 10
        assert len(browser.find_elements(By.CSS_SELECTOR, "#pending tbody tr")) == 2
