"""`iclevr serve` in a real browser: start the command on a free port with a tiny model, drive headless
Chromium (Debian's chromium + chromium-driver, through selenium) to pick objects, see the page's messages
for bad input, press Generate, wait for the final images and read the verdicts off the page; then SIGTERM
stops the server cleanly. Skipped, with the reason, where Chromium or its driver is missing."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None,
        reason="needs Chromium and its driver (apt-get install chromium chromium-driver)",
    ),
    pytest.mark.slow,
]


@pytest.fixture
def weights(tmp_path, tiny_model_cfg):
    """A random-weight tiny model (stored sampler: ddim, 6 steps)."""
    from iclevr.model import build_model
    from iclevr.settings import SamplerSettings, ScheduleSettings
    from iclevr.weights import save_weights

    torch.manual_seed(0)
    return save_weights(
        build_model(tiny_model_cfg),
        tmp_path / "w.safetensors",
        model_cfg=tiny_model_cfg,
        schedule_cfg=ScheduleSettings(),
        sampler_cfg=SamplerSettings(sampler="ddim", steps=6),
    )


class Served:
    """`python -m iclevr serve` as a subprocess: its url once it listens, and everything it printed."""

    def __init__(self, *args: str):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}  # PYTHONPATH is inherited
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iclevr", "serve", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self.url: str | None = None
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("serving on "):
                self.url = line.split()[2]

    def wait_ready(self, timeout: float = 180) -> str:
        end = time.monotonic() + timeout
        while self.url is None:
            assert self.proc.poll() is None, "\n".join(self.lines)
            assert time.monotonic() < end, "the server did not start:\n" + "\n".join(self.lines)
            time.sleep(0.2)
        return self.url

    def stop(self, sig=signal.SIGTERM, timeout: float = 30) -> int:
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


def chromium():
    """Headless Chromium through the system's chromedriver (no driver download)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install -e '.[test]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,900"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(DRIVER), options=options)


def test_pick_generate_and_read_the_verdicts_in_chromium(weights, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from iclevr.evaluation.evaluator import PACKAGED

    served = Served("--checkpoint", str(weights), "--evaluator", str(PACKAGED))
    browser = None
    try:
        url = served.wait_ready()
        browser = chromium()
        wait = WebDriverWait(browser, 60)
        browser.get(url)
        assert "model: --checkpoint" in browser.find_element(By.ID, "model").text

        def pick(label: str) -> None:
            browser.find_element(By.CSS_SELECTOR, f'button.obj[data-label="{label}"]').click()

        def field(name: str, value) -> None:
            box = browser.find_element(By.ID, name)
            box.clear()
            box.send_keys(str(value))

        for label in ("red sphere", "cyan cylinder", "cyan cube"):  # the course's trace scene is picked at first
            pick(label)
        for label in ("red sphere", "cyan cube", "blue cylinder"):
            pick(label)
        pick("gray cube")  # a fourth: the page refuses it with a message
        assert "At most 3 objects" in browser.find_element(By.ID, "message").text
        assert "red sphere, cyan cube, blue cylinder (3/3)" in browser.find_element(By.ID, "scene").text

        field("steps", 0)  # out of range: the server's message shows on the page
        browser.find_element(By.ID, "generate").click()
        wait.until(EC.text_to_be_present_in_element((By.ID, "message"), "steps: input should be greater"))
        assert not browser.find_elements(By.CSS_SELECTOR, ".result")

        field("steps", 6)
        field("num", 2)
        field("seed", 3)
        browser.find_element(By.ID, "generate").click()
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, ".result")) == 2)
        assert browser.find_element(By.ID, "message").text == ""
        assert browser.find_element(By.ID, "live-xt").get_attribute("src").startswith("data:image/png")
        assert "step 6 of 6" in browser.find_element(By.ID, "cap-xt").text  # the trace was shown
        assert "2 image(s) in" in browser.find_element(By.ID, "status").text
        for card in browser.find_elements(By.CSS_SELECTOR, ".result"):
            rows = card.find_elements(By.CSS_SELECTOR, ".verdict")
            asked = [r.get_attribute("data-label") for r in rows if r.get_attribute("data-kind") != "wrong"]
            assert asked == ["red sphere", "cyan cube", "blue cylinder"]
            kinds = {r.get_attribute("data-kind") for r in rows}
            assert kinds <= {"found", "missed", "wrong"}
            found = sum(r.get_attribute("data-kind") == "found" for r in rows)
            assert f"{found}/3 found" in card.text
            assert card.find_element(By.CSS_SELECTOR, "img.final").get_attribute("naturalWidth") == "64"
            gif = card.find_element(By.CSS_SELECTOR, "a.download-gif")
            assert gif.get_attribute("href").startswith("data:image/gif") and gif.get_attribute("download")
        assert "ddim, 6 steps" in browser.find_element(By.ID, "summary").text
    finally:
        if browser is not None:
            browser.quit()
        code = served.stop()
    output = "\n".join(served.lines)
    assert code == 0, output
    assert "Traceback" not in output and "stopped (1 generation(s) served)" in output  # the bad request never queued
