"""``dcfg bench app``: the page's answer time in a real browser, beside the same query from Python and the CLI.

The browser is a headless Chromium from the system's packages (``apt-get install chromium chromium-driver``),
driven by Selenium (in the ``test`` extra); nothing is downloaded. The same helpers drive the page in the
tests (``tests/pipeline/test_app.py``).
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver", "chromium-driver")


def find_browser() -> tuple[str, str] | None:
    """``(browser, driver)`` paths of a system Chromium and its chromedriver, or ``None``."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = next((p for p in map(shutil.which, DRIVERS) if p), None)
    if browser is None and Path("/usr/lib/chromium/chromium").is_file():
        browser = "/usr/lib/chromium/chromium"
    return (browser, driver) if browser and driver else None


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_app(args: Sequence[str] = (), *, port: int | None = None, timeout: float = 180.0,
              env: Mapping[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``dcfg app ARGS --port P`` in a child process; return it and its URL once the page answers.

    Raises:
        RuntimeError: the server exited or did not answer within ``timeout`` (its output is in the message).
    """
    port = free_port() if port is None else port
    log = tempfile.TemporaryFile()
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "app", *args, "--port", str(port)],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}/"
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            break
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    proc.log = log  # type: ignore[attr-defined]
                    return proc, url
        except OSError:
            time.sleep(0.5)
    stop_app(proc)
    log.seek(0)
    raise RuntimeError(f"dcfg app did not answer at {url} within {timeout:.0f} s:\n"
                       + log.read().decode(errors="replace")[-3000:])


def stop_app(proc: subprocess.Popen) -> None:
    """Stop a server started by :func:`start_app`."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def browser(width: int = 1400, height: int = 1700) -> Any:
    """A headless Chromium (Selenium WebDriver) from the system's packages."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if found is None:
        raise RuntimeError("no system Chromium and chromedriver: apt-get install chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    opts.binary_location = found[0]
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={width},{height}"):
        opts.add_argument(a)
    return webdriver.Chrome(service=Service(found[1]), options=opts)


def _wait(driver: Any, cond: Any, timeout: float) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(cond)


def set_number(driver: Any, css: str, value: Any) -> None:
    """Type ``value`` into the number box at ``css`` (a slider's or a number field's) and leave it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element(By.CSS_SELECTOR, css)
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(str(value))
    box.send_keys(Keys.TAB)


def pick_example(driver: Any, url: str, index: int, timeout: float = 60.0) -> None:
    """Open the page and click test image ``index``; returns once the factual image is shown."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    thumbs = _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#examples button.thumbnail-item"), timeout)
    thumbs[index].click()
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, "#image-factual img"), timeout)


def run_query(driver: Any, do: Mapping[str, Any], steps: int | None = None, timeout: float = 300.0
              ) -> dict[str, Any]:
    """Tick and set each intervention, set the steps, click Run; wait for all four images.

    Returns the seconds from the click to the first counterfactual image and to the last one, the number of
    images shown, and each column's caption (attribute -> measured text).
    """
    from selenium.webdriver.common.by import By

    for name, value in do.items():
        box = driver.find_element(By.CSS_SELECTOR, f"#use-{name} input[type=checkbox]")
        if not box.is_selected():
            box.click()
        set_number(driver, f"#do-{name} input[type=number]", value)
    if steps is not None:
        set_number(driver, "#steps input[type=number]", steps)
    time.sleep(0.3)  # let the last change reach the server before the click
    t0 = time.perf_counter()
    driver.find_element(By.ID, "run").click()
    cf = "#image-none img, #image-cfg img, #image-dcfg img"
    _wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, cf), timeout)
    first = time.perf_counter() - t0
    _wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, cf)) == 3
          and len(d.find_elements(By.CSS_SELECTOR, "#caption-none td, #caption-cfg td")) > 0, timeout)
    last = time.perf_counter() - t0
    captions = {}
    for m in ("factual", "none", "cfg", "dcfg"):
        cells = driver.find_elements(By.CSS_SELECTOR, f"#caption-{m} td.dcfg-measured")
        captions[m] = {c.get_attribute("data-attr"): c.text for c in cells}
    images = len(driver.find_elements(By.CSS_SELECTOR, "[id^=image-] img"))
    return {"first_s": first, "all_s": last, "images": images, "measured": captions}


def page_message(driver: Any, text: str, timeout: float = 30.0) -> str:
    """Wait until ``text`` shows on the page (an error toast, a status line); return the page's visible text."""
    from selenium.webdriver.common.by import By

    _wait(driver, lambda d: text in d.find_element(By.TAG_NAME, "body").text, timeout)
    return driver.find_element(By.TAG_NAME, "body").text


def upload(driver: Any, path: str | os.PathLike) -> None:
    """Send a file to the page's upload box."""
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.CSS_SELECTOR, "#upload input[type=file]")
    box.send_keys(str(Path(path).resolve()))


def bench_app(pipeline: str | None, out: str | os.PathLike | None = None, *, example: int = 3,
              thickness: float = 4.0, threads: int | None = None, screenshot: str | os.PathLike | None = None,
              log: Any = print) -> dict[str, Any]:
    """Time a do(thickness) query at the pipeline's defaults: on the page (click -> first image), in Python
    (``pipe.counterfactual``, the model already loaded) and through ``dcfg counterfactual`` (whole process)."""
    import torch

    from pipeline.app import CounterfactualApp, load_examples
    from pipeline.core import CounterfactualPipeline, resolve_pipeline_path
    from pipeline.images import save_image
    from pipeline.machine import cpu_facts

    if threads:
        torch.set_num_threads(threads)
    name, folder = resolve_pipeline_path(pipeline)
    pipe = CounterfactualPipeline.pretrained(name) if name is not None else CounterfactualPipeline.load(folder)
    app = CounterfactualApp(pipe, load_examples(pipe))
    x, factual = app.example(example)
    parents = {k: torch.tensor([int(v) if pipe.graph.spec(k).is_discrete else v]) for k, v in factual.items()}
    pipe.counterfactual(x, parents, do={"thickness": thickness}, steps=2)  # warm-up
    t0 = time.perf_counter()
    pipe.counterfactual(x, parents, do={"thickness": thickness})
    python_s = time.perf_counter() - t0

    tmp = Path(tempfile.mkdtemp(prefix="dcfg-bench-app-"))
    save_image(x, tmp / "factual.png")
    parents_text = ",".join(f"{k}={int(v) if pipe.graph.spec(k).is_discrete else v:.6g}"
                            for k, v in factual.items())
    cli = [sys.executable, "-m", "pipeline.cli", "counterfactual", "--image", str(tmp / "factual.png"),
           "--parents", parents_text, "--do", f"thickness={thickness}", "--out", str(tmp / "cf.png")]
    if pipeline:
        cli += ["--pipeline", str(pipeline)]
    if threads:
        cli += ["--threads", str(threads)]
    t0 = time.perf_counter()
    subprocess.run(cli, check=True, capture_output=True)
    cli_s = time.perf_counter() - t0
    steps = int(pipe.config.steps)
    del pipe, app

    args = (["--pipeline", str(pipeline)] if pipeline else []) + (["--threads", str(threads)] if threads else [])
    proc, url = start_app(args)
    driver = browser()
    try:
        pick_example(driver, url, example)
        warm = run_query(driver, {"thickness": thickness}, steps=2)  # the first query pays for lazy imports
        pick_example(driver, url, example)
        page = run_query(driver, {"thickness": thickness})
        if screenshot is not None:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
        stop_app(proc)
    result = {"pipeline": pipeline or "morphomnist", "query": f"do(thickness={thickness}) on test image {example}",
              "steps": steps,
              "page_first_s": round(page["first_s"], 3), "page_all_s": round(page["all_s"], 3),
              "python_query_s": round(python_s, 3), "cli_s": round(cli_s, 3),
              "page_minus_python_s": round(page["first_s"] - python_s, 3),
              "warmup_first_s": round(warm["first_s"], 3), "measured_dcfg": page["measured"]["dcfg"],
              "threads": torch.get_num_threads(), **cpu_facts()}
    for k in ("page_first_s", "page_all_s", "python_query_s", "cli_s", "page_minus_python_s"):
        log(f"{k}: {result[k]}")
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    return result
