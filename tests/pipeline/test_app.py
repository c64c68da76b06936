"""``dcfg app``: the page's logic from Python, and the page itself in a headless system Chromium.

The browser tests need the ``test`` extra (Gradio, Selenium) and ``apt-get install chromium chromium-driver``;
``.ci/run`` installs both and sets ``DCFG_REQUIRE_BROWSER=1``, which turns a missing browser into a failure instead of
a skip.
"""
import json
import math
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from pipeline.app import MAX_UPLOAD_BYTES, CounterfactualApp
from pipeline.images import save_image

REQUIRE_BROWSER = os.environ.get("DCFG_REQUIRE_BROWSER") == "1"


def _need(condition: bool, why: str) -> None:
    if condition:
        return
    if REQUIRE_BROWSER:
        pytest.fail(f"DCFG_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why)


@pytest.fixture(scope="module")
def app(tiny_pipeline, tiny_batch):
    images, attrs = tiny_batch
    return CounterfactualApp(tiny_pipeline, (images, attrs), prior_samples=2000)


def test_controls_follow_the_node_kinds(app):
    t, i, d = app.controls["thickness"], app.controls["intensity"], app.controls["digit"]
    assert not t.discrete and 0.0 <= t.low < t.default < t.high
    spec = app.graph.spec("intensity")
    assert spec.kind == "interval" and (i.low, i.high) == (spec.low, spec.high)
    assert d.discrete and d.choices == tuple(range(10))


def test_query_streams_dcfg_first_and_matches_the_pipeline(app, tiny_pipeline):
    x, factual = app.example(0)
    answers = list(app.query(x, factual, {"thickness": 3.5}, steps=4))
    assert [c.method for c in answers[0].columns] == ["factual", "dcfg"]
    final = answers[-1]
    assert [c.method for c in final.columns] == ["factual", "dcfg", "cfg", "none"]
    assert final.intervened == ["thickness"] and final.descendants == ["intensity"]
    parents = {k: torch.tensor([int(v) if k == "digit" else v]) for k, v in factual.items()}
    w = tiny_pipeline.config.default_scale(["thickness"])
    for col in final.columns[1:]:
        # CFG and none reuse the DCFG query's inversion: the same images as separate queries
        ref = tiny_pipeline.counterfactual(x, parents, do={"thickness": 3.5}, guidance=col.method, scale=w,
                                           steps=4)
        torch.testing.assert_close(col.image, ref.image[0], atol=1e-5, rtol=0)
        assert col.groups == ref.groups and col.weights == ref.weights
        assert col.attributes["thickness"] == pytest.approx(3.5)
    blob = json.loads(json.dumps(final.to_json()))
    assert blob["query"]["do"] == {"thickness": 3.5} and len(blob["results"]) == 4


def test_only_the_chosen_methods_run(app):
    x, factual = app.example(1)
    final = list(app.query(x, factual, {"digit": 2}, methods=["cfg"], steps=3))[-1]
    assert [c.method for c in final.columns] == ["factual", "cfg"]
    assert final.columns[1].attributes["digit"] == 2


@pytest.mark.parametrize("do, steps, methods, message", [
    ({"intensity": 300.0}, 4, ["dcfg"], "intensity=300 is outside the node's interval"),
    ({"thickness": -1.0}, 4, ["dcfg"], "thickness=-1 must be positive"),
    ({"digit": 12}, 4, ["dcfg"], "digit=12 must be one of the classes 0..9"),
    ({"digit": "two"}, 4, ["dcfg"], "do digit='two' must be a number"),
    ({"colour": 1.0}, 4, ["dcfg"], "unknown node 'colour'"),
    ({}, 4, ["dcfg"], "choose at least one attribute"),
    ({"thickness": 3.0}, 0, ["dcfg"], "steps=0 must be an integer"),
    ({"thickness": 3.0}, 4, [], "choose one or more of"),
    ({"thickness": 3.0}, 4, ["apg"], "choose one or more of"),
])
def test_bad_queries_are_one_clear_message(app, do, steps, methods, message):
    x, factual = app.example(0)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        next(app.query(x, factual, do, methods=methods, steps=steps))


def test_uploads_are_read_measured_or_refused(app, tmp_path):
    x, _ = app.example(2)
    good = tmp_path / "digit.png"
    save_image(x, good)
    y, values = app.read_upload(good)
    assert y.shape == x.shape and set(values) == set(app.nodes)
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image\n")
    with pytest.raises(ValueError, match="is not a readable PNG/JPEG image"):
        app.read_upload(fake)
    big = tmp_path / "big.png"
    save_image(torch.zeros(1, 1, 16, 16), big)
    with pytest.raises(ValueError, match="16x16 pixels, but the pipeline expects 8x8"):
        app.read_upload(big)
    huge = tmp_path / "huge.png"
    huge.write_bytes(b"\0" * (MAX_UPLOAD_BYTES + 1))
    with pytest.raises(ValueError, match="accepts at most 5 MB"):
        app.read_upload(huge)


def test_dag_drawing_is_a_png(app):
    arr = app.dag_array()
    assert arr.ndim == 3 and arr.shape[2] == 3 and arr.std() > 0


def _dcfg(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


def test_app_without_gradio_is_one_line_naming_the_extra():
    code = ("import sys; sys.modules['gradio'] = None\n"
            "from pipeline.cli import main\nmain(['app'])")
    res = _dcfg(code)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install" in lines[0] and "[app]" in lines[0], res.stderr


def test_app_on_a_taken_port_is_one_line():
    pytest.importorskip("gradio")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        res = _dcfg(f"from pipeline.cli import main\nmain(['app', '--port', '{port}'])")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--port {port}: cannot listen there" in lines[0], res.stderr


# ---------------------------------------------------------------------- the page in a real browser
@pytest.fixture(scope="module")
def server():
    from pipeline.bench_app import find_browser, start_app, stop_app

    for mod in ("gradio", "selenium"):
        try:
            __import__(mod)
        except ImportError:
            _need(False, f"{mod} is not installed (pip install -e '.[test]')")
    _need(find_browser() is not None, "no system Chromium/chromedriver (apt-get install chromium chromium-driver)")
    proc, url = start_app(["--threads", "1"], env={"OMP_NUM_THREADS": "1"})
    yield url
    stop_app(proc)


@pytest.fixture(scope="module")
def driver(server):
    from pipeline.bench_app import browser

    d = browser()
    yield d
    d.quit()


def test_page_answers_do_thickness_with_four_measured_images(server, driver):
    from pipeline.bench_app import pick_example, run_query

    pick_example(driver, server, 3)
    res = run_query(driver, {"thickness": 4}, steps=5)
    assert res["images"] == 4
    thickness = float(res["measured"]["dcfg"]["thickness"])
    assert math.isfinite(thickness) and thickness > 0
    assert set(res["measured"]["factual"]) == {"thickness", "intensity", "digit"}


def test_page_answers_a_fake_png_with_the_library_message_and_keeps_serving(server, driver, tmp_path):
    from selenium.webdriver.common.by import By

    from pipeline.bench_app import page_message, pick_example, upload

    driver.get(server)
    fake = tmp_path / "fake.png"
    fake.write_text("not an image, only text\n")
    page_message(driver, "Drop File Here")
    upload(driver, fake)
    text = page_message(driver, "is not a readable PNG/JPEG image")
    assert "fake.png" in text
    pick_example(driver, server, 0)  # the server still answers
    assert driver.find_elements(By.CSS_SELECTOR, "#image-factual img")


def test_page_refuses_an_out_of_range_value_sent_by_hand(server, driver):
    from selenium.webdriver.common.by import By

    from pipeline.bench_app import page_message, pick_example

    pick_example(driver, server, 1)
    # a value past the slider's end, typed into the factual box (no slider clamps it)
    box = driver.find_element(By.CSS_SELECTOR, "#factual-intensity input")
    box.clear()
    box.send_keys("300")
    driver.find_element(By.CSS_SELECTOR, "#use-thickness input[type=checkbox]").click()
    driver.find_element(By.ID, "run").click()
    page_message(driver, "factual intensity=300 is outside the node's interval [0, 255]")
    assert not np.any([e.is_displayed() for e in driver.find_elements(By.CSS_SELECTOR, "#image-dcfg img")])
