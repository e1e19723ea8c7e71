"""Time per image through `iclevr serve`'s page, in headless Chromium, and the page's screenshot (issue 28).

Starts `python -m iclevr serve --port 0` with the packaged model (run from an empty folder, so no run under
./checkpoints is chosen) and the default evaluator, opens the page in headless Chromium (Debian's chromium +
chromium-driver through selenium), keeps the scene the page starts with (the course's trace condition), and
for each of --repeats seeds presses Generate with one image and waits for the final image. Per run it records
the seconds the page reports (sampling + verdicts, in the server), the seconds from the click to the image
in the browser, and how many different "step i of N" captions of the live trace the browser saw before the
image arrived (the trace is visible while it runs when that count is above 1). A last run draws --grid
images and is what docs/serve_screenshot.png shows. The 1-minute load average is recorded before and after,
since the machine is shared.

    python benchmarks/serve_page.py [--repeats 5] [--grid 4] [--screenshot docs/serve_screenshot.png]

Results go to benchmarks/results/serve_page.json (paths relative to the repository).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "serve_page.json"


def start_server(folder: Path) -> tuple[subprocess.Popen, str, list[str]]:
    """`iclevr serve` on a free port from an empty folder; returns (process, url, its first lines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ICLEVR_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(
        [sys.executable, "-m", "iclevr", "serve", "--port", "0"],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip())
        if line.startswith("serving on "):
            return proc, line.split()[2], lines
    raise SystemExit("the server did not start:\n" + "\n".join(lines))


def browser():
    """Headless Chromium through the system chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)


def generate(driver, seed: int, num: int, timeout: float = 120) -> dict:
    """Set seed and image count, press Generate, watch the captions until the images arrive."""
    from selenium.webdriver.common.by import By

    for name, value in (("seed", seed), ("num", num)):
        box = driver.find_element(By.ID, name)
        box.clear()
        box.send_keys(str(value))
    began = time.perf_counter()
    driver.find_element(By.ID, "generate").click()
    captions = set()
    while len(driver.find_elements(By.CSS_SELECTOR, ".result")) < num:
        captions.add(driver.find_element(By.ID, "cap-xt").text)
        if time.perf_counter() - began > timeout:
            raise SystemExit(f"no image after {timeout:.0f} s")
        time.sleep(0.02)
    browser_s = time.perf_counter() - began
    status = driver.find_element(By.ID, "status").text  # "done: N image(s) in X s (Y s per image)"
    server_s = float(status.split(" in ")[1].split(" s")[0])
    found = [c.text.split("\n")[0] for c in driver.find_elements(By.CSS_SELECTOR, ".result .score")]
    return {
        "seed": seed,
        "images": num,
        "server_s": server_s,
        "browser_s": round(browser_s, 2),
        "browser_s_per_image": round(browser_s / num, 2),
        "trace_captions_seen_while_running": len({c for c in captions if c.startswith("x_t at step")}),
        "scores": found,
    }


def main() -> None:
    """Measure, take the screenshot, write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--grid", type=int, default=4)
    ap.add_argument("--screenshot", type=Path, default=ROOT / "docs" / "serve_screenshot.png")
    args = ap.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:
        proc, url, lines = start_server(Path(folder))
        driver = browser()
        try:
            driver.get(url)
            runs = [generate(driver, seed, 1) for seed in range(args.repeats)]
            grid = generate(driver, args.repeats, args.grid)
            driver.save_screenshot(str(args.screenshot))
        finally:
            driver.quit()
            proc.terminate()
            proc.wait(30)
    load_after = os.getloadavg()
    out = {
        "command": "python benchmarks/serve_page.py " + " ".join(sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
        "load_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "server_lines": lines[:2],
        "runs": runs,
        "grid_run": grid,
        "median_server_s_per_image": statistics.median(r["server_s"] for r in runs),
        "median_browser_s_per_image": statistics.median(r["browser_s"] for r in runs),
        "screenshot": str(args.screenshot.resolve().relative_to(ROOT)),
    }
    out["server_lines"] = [line.replace(str(ROOT) + "/", "") for line in out["server_lines"]]
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
