"""``latentfm serve``: the page's handlers as functions, then the page itself driven in headless Chromium (Debian's
``chromium`` through Playwright's Python package; Playwright's own browser download is never used).

The browser tests skip, saying why, where Chromium or Playwright is missing; with LATENTFM_REQUIRE_BROWSER=1 (set
by .ci/run) they fail instead, so CI never skips them.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from latentfm.config import load_config
from latentfm.errors import LatentFMError
from latentfm.pipeline import FlowPipeline
from latentfm.training.trainer import Trainer

from .conftest import TINY

gradio = pytest.importorskip("gradio", reason="latentfm serve needs the ui extra: pip install 'latentfm[ui]'")
from latentfm import serve  # noqa: E402  (after the skip: it is only used with gradio installed)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
REQUIRED = os.environ.get("LATENTFM_REQUIRE_BROWSER") == "1"
SAMPLING = ("midpoint", 4, 1.0, 0.0, 1.0, "")  # solver, NFE, guidance weight, interval, turbo program


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny class model and a tiny inpainting model on digits (8x8 grey)."""
    root = tmp_path_factory.mktemp("serve")
    for name, task in (("class", []), ("inpaint", ["task.kind=inpaint", "flow.coupling=independent"])):
        Trainer(load_config(None, [*TINY, *task, "train.steps=4", f"train.out_dir={root / name}"])).run()
    return root


def test_generate_returns_images_and_the_exact_nfe(runs):
    pipe = FlowPipeline.from_pretrained(runs / "class")
    images, status = serve.generate_images(pipe, ["3"], 0, 5, *SAMPLING)
    assert len(images) == 5 and images[0].shape == (224, 224) and images[0].std() > 0
    assert status.startswith("NFE 4 per sample")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ((["12"], 0, 2, *SAMPLING), "class '12' is not one this model knows"),
        ((["3"], 0, 0, *SAMPLING), "count 0: give a whole number from 1 to 64"),
        ((["3"], 0, 2, "midpoint", 0, 1.0, 0.0, 1.0, ""), "NFE 0: give a whole number of at least 1"),
        ((["3"], 0, 2, "midpoint", 4, 1.0, 0.8, 0.2, ""), "guidance_interval=(0.8, 0.2) must satisfy"),
    ],
)
def test_bad_values_become_one_status_line(runs, values, message):
    shelf = serve.ModelShelf([str(runs / "class")], torch.device("cpu"))
    images, status = serve.guarded(serve.generate_images, shelf, "class")(str(runs / "class"), *values)
    assert images == [] and status.startswith("Error: ") and message in status and "\n" not in status


def test_a_tab_refuses_a_model_of_another_task(runs):
    shelf = serve.ModelShelf([str(runs / "class")], torch.device("cpu"))
    images, status = serve.guarded(serve.inpaint_images, shelf, "inpaint")(str(runs / "class"), None, 0, 1, *SAMPLING)
    assert (
        images == []
        and status
        == f"Error: {runs / 'class'} is a class model; this tab needs a model of the inpaint task: choose one"
    )


def test_inpaint_keeps_the_known_pixels_and_refuses_a_missing_mask(runs):
    pipe = FlowPipeline.from_pretrained(runs / "inpaint")
    background = serve.example_image(pipe)
    layer = np.zeros((224, 224, 4), dtype=np.uint8)
    layer[20:50, 20:200, 3] = 255  # a stroke over the top rows
    editor = {"background": background, "layers": [layer]}
    completions, status = serve.inpaint_images(pipe, editor, 1, 3, *SAMPLING)  # seed 0 made the example
    assert len(completions) == 3 and status.startswith("NFE 4")
    for completion in completions:
        assert np.array_equal(completion[56:], background[56:])  # below the painted blocks: the input exactly
        assert not np.array_equal(completion[:56], background[:56])
    with pytest.raises(LatentFMError, match="no mask painted"):
        serve.inpaint_images(pipe, {"background": background, "layers": [layer * 0]}, 0, 1, *SAMPLING)
    with pytest.raises(LatentFMError, match="the image is 30x30; this model inpaints 8x8 images"):
        serve.inpaint_images(pipe, {"background": np.zeros((30, 30, 3), np.uint8), "layers": [layer]}, 0, 1, *SAMPLING)


def test_a_port_in_use_is_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(LatentFMError, match=f"--port {port}: 127.0.0.1:{port} is in use"):
            serve.check_port("127.0.0.1", port)


def test_serve_on_a_port_in_use_exits_2(runs, capsys):
    from latentfm.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        assert main(["serve", "--model", str(runs / "class"), "--port", port, "--device", "cpu"]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"latentfm: error: --port {port}: 127.0.0.1:{port} is in use; give another --port"
    )


# The page in a real browser.


@pytest.fixture(scope="module")
def page_url(runs):
    """``latentfm serve`` of both tiny models on a free port of 127.0.0.1, started once for this module."""
    if CHROMIUM is None or _missing("playwright"):
        reason = "Chromium (apt-get install chromium) or playwright (pip install playwright) is missing"
        if REQUIRED:
            pytest.fail(f"LATENTFM_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(f"the page's browser tests need {reason}")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "latentfm.cli", "--quiet", "serve", "--port", str(port), "--device", "cpu"]
    command += ["--model", str(runs / "class"), "--model", str(runs / "inpaint")]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for(url, server)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser(page_url):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, page_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    page.goto(page_url)
    page.wait_for_selector("#generate")
    yield page
    page.close()


def test_the_page_generates_a_class_with_the_nfe_asked_for(page):
    assert page.get_by_role("tab", name="Generate").is_visible()
    assert page.get_by_role("tab", name="Inpaint").is_visible()  # one tab per task the page's models can do
    page.locator("#classes input").click()
    page.get_by_role("option", name="7", exact=True).click()
    page.locator("#nfe input").fill("6")
    page.locator("#generate").click()
    status = _status(page, "generate")
    assert status.startswith("NFE 6 per sample"), status
    first = _gallery_images(page, "generate")[0]
    assert first.shape[:2] == (224, 224) and first.std() > 5  # not blank


def test_the_page_shows_a_bad_value_as_a_message(page):
    page.locator("#nfe input").fill("0")
    page.locator("#generate").click()
    assert _status(page, "generate") == "Error: NFE 0: give a whole number of at least 1"
    assert "Traceback" not in page.content()


def test_the_page_inpaints_a_painted_stroke_keeping_the_rest(page, runs):
    page.locator("#model input").click()
    page.get_by_role("option", name=str(runs / "inpaint")).click()
    page.wait_for_selector("#example", state="visible")  # choosing the model selects its tab
    page.locator("#inpaint").click()  # nothing uploaded yet: a message, not a traceback
    refused = _status(page, "inpaint")
    assert refused.startswith("Error: upload an image"), refused
    page.locator("#seed input").fill("1")  # seed 0 made the example image
    page.locator("#example").click()
    page.wait_for_timeout(1500)  # the example image is drawn into the editor
    box = page.locator("#editor canvas").first.bounding_box()
    middle_x, middle_y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(middle_x - 80, middle_y - 110)  # a stroke across the image's top rows
    page.mouse.down()
    page.mouse.move(middle_x + 80, middle_y - 110, steps=12)
    page.mouse.up()
    page.locator("#inpaint").click()
    done = _status(page, "inpaint", previous=refused)
    assert done.startswith("NFE "), done
    example = serve.example_image(FlowPipeline.from_pretrained(runs / "inpaint"))
    for completion in _gallery_images(page, "inpaint"):
        unchanged = np.all(completion == example, axis=-1) if completion.ndim == 3 else completion == example
        assert unchanged[112:].all(), "a pixel below the stroke changed"
        assert not unchanged.all(), "nothing was generated"


def _status(page, tab: str, previous: str = "") -> str:
    """The status line of ``tab`` once the action has finished: a result or an error other than ``previous`` (while
    it runs, Gradio shows its progress there)."""
    page.wait_for_function(
        "([id, previous]) => { const text = document.querySelector(id).innerText.trim();"
        " return /^(NFE|Error)/.test(text) && text !== previous; }",
        arg=[f"#status-{tab}", previous],
        timeout=120_000,
    )
    return page.locator(f"#status-{tab}").inner_text().strip()


def _gallery_images(page, tab: str) -> list[np.ndarray]:
    """The images of ``tab``'s gallery, fetched from the server as the browser shows them."""
    images = page.locator(f"#gallery-{tab} img")
    images.first.wait_for()
    arrays = []
    for index in range(images.count()):
        data = page.request.get(images.nth(index).get_attribute("src")).body()
        arrays.append(np.asarray(Image.open(io.BytesIO(data)).convert("L")))
    return arrays


def _missing(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return True
    return False


def _wait_for(url: str, server: subprocess.Popen, seconds: float = 120) -> None:
    """Wait until the server answers ``url`` (or fail with what it printed)."""
    import urllib.request

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"latentfm serve exited: {server.stdout.read()}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"latentfm serve did not answer {url} in {seconds} s")
