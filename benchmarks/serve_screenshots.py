"""The README's pictures of `latentfm serve`: one screenshot per tab, taken in headless Chromium after an action.

    python benchmarks/serve_screenshots.py    # writes benchmarks/results/serve_TAB.png, one per tab

Generate shows the built-in fashion-mnist model; the other tabs show tiny models trained here on 8x8 digits for a
few steps (there is no built-in model of those tasks), which is what their pictures say.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from latentfm.config import load_config
from latentfm.training.trainer import Trainer

RESULTS = Path(__file__).resolve().parent / "results"
TINY = [
    "data.dataset=digits", "train.device=cpu", "model.patch_size=2", "model.hidden_size=32", "model.depth=2",
    "model.num_heads=2", "train.batch_size=32", "train.steps=20", "train.log_every=10", "train.checkpoint_every=0",
    "optim.lr=1e-3", "optim.warmup_steps=2", "sample.nfe=4",
]  # fmt: skip
TASKS = {
    "inpaint": ["task.kind=inpaint", "flow.coupling=independent"],
    "upsample": ["task.kind=upsample"],
    "semantic": ["task.kind=semantic", "task.map_dropout=0.2"],
}


def serve(models: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "latentfm.cli", "--quiet", "serve", "--port", str(port)]
    for model in models:
        command += ["--model", model]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    for _ in range(600):
        try:
            urllib.request.urlopen(url, timeout=2)
            return server, url
        except OSError:
            time.sleep(0.5)
    raise SystemExit("latentfm serve did not answer")


def choose(page, name: str, tab: str) -> None:
    page.locator("#model input").click()
    page.get_by_role("option", name=name, exact=True).click()
    page.get_by_role("tab", name=tab).click()


def main() -> None:
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as root:
        runs = {}
        for kind, task in TASKS.items():
            runs[kind] = str(Path(root) / kind)
            Trainer(load_config(None, [*TINY, *task, f"train.out_dir={runs[kind]}"])).run()
        low = Path(root) / "low.png"
        Image.fromarray(np.kron(np.eye(2, dtype=np.uint8) * 255, np.ones((2, 2), np.uint8))).save(low)
        semantic_map = Path(root) / "map.png"
        Image.fromarray(np.kron(np.array([[0, 1], [2, 1]], dtype=np.uint8), np.ones((4, 4), np.uint8))).save(
            semantic_map
        )
        server, url = serve(["fashion-mnist", *runs.values()])
        try:
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1100, "height": 900})
                page.goto(url)
                page.wait_for_selector("#generate")
                page.locator("#classes input").click()
                for name in ("Sneaker", "Bag"):
                    page.get_by_role("option", name=name, exact=True).click()
                page.locator("#generate").click()
                page.wait_for_function("/^NFE/.test(document.querySelector('#status-generate').innerText.trim())")
                page.wait_for_timeout(1000)
                page.screenshot(path=str(RESULTS / "serve_generate.png"), full_page=True)

                choose(page, runs["inpaint"], "Inpaint")
                page.locator("#example").click()
                page.wait_for_timeout(1500)
                box = page.locator("#editor canvas").first.bounding_box()
                x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
                page.mouse.move(x - 80, y - 100)
                page.mouse.down()
                page.mouse.move(x + 80, y - 60, steps=12)
                page.mouse.up()
                page.locator("#seed input").fill("1")
                page.locator("#inpaint").click()
                page.wait_for_function("/^NFE/.test(document.querySelector('#status-inpaint').innerText.trim())")
                page.wait_for_timeout(1000)
                page.screenshot(path=str(RESULTS / "serve_inpaint.png"), full_page=True)

                choose(page, runs["upsample"], "Upsample")
                page.locator("#low-image input[type=file]").set_input_files(str(low))
                page.wait_for_timeout(1000)
                page.locator("#upsample").click()
                page.wait_for_function("/^NFE/.test(document.querySelector('#status-upsample').innerText.trim())")
                page.wait_for_timeout(1000)
                page.screenshot(path=str(RESULTS / "serve_upsample.png"), full_page=True)

                choose(page, runs["semantic"], "Semantic")
                page.locator("#map-image input[type=file]").set_input_files(str(semantic_map))
                page.wait_for_timeout(1000)
                page.locator("#semantic").click()
                page.wait_for_function(
                    "/^(NFE|Error)/.test(document.querySelector('#status-semantic').innerText.trim())"
                )
                page.wait_for_timeout(1000)
                page.screenshot(path=str(RESULTS / "serve_semantic.png"), full_page=True)
                browser.close()
        finally:
            server.terminate()
            server.wait(timeout=60)
    print("wrote", ", ".join(f"serve_{tab}.png" for tab in ("generate", "inpaint", "upsample", "semantic")))


if __name__ == "__main__":
    main()
