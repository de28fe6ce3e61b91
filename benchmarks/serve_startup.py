"""From a fresh clone to the page: how long installing takes, how long `latentfm serve --model fashion-mnist` takes
to answer on 127.0.0.1, and how long one Generate (8 images, 8 NFE) takes through the page in headless Chromium.

    python benchmarks/serve_startup.py            # clones HEAD into a temporary directory; writes
                                                  # benchmarks/results/serve_startup.json

Needs Debian's chromium and playwright (the test extras). The install uses whatever pip finds: on the development
machine torch 2.13.0 (CPU) and the Gradio wheels come from local disk or the package index; say which in the record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(command: list[str], cwd: Path) -> float:
    """Seconds ``command`` took (it must succeed)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(url: str, server: subprocess.Popen, limit: float = 600) -> float:
    """Seconds until ``url`` answers."""
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if server.poll() is not None:
            raise SystemExit(f"latentfm serve exited with {server.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer in {limit} s")


def generate_in_browser(url: str, chromium: str, repeats: int) -> list[dict]:
    """Press Generate (8 images, 8 NFE) ``repeats`` times: the wall time seen in the browser and the status line."""
    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#generate")
        page.locator("#nfe input").fill("8")
        previous = ""
        for seed in range(repeats):
            page.locator("#seed input").fill(str(seed))
            start = time.perf_counter()
            page.locator("#generate").click()
            page.wait_for_function(
                "([previous]) => { const t = document.querySelector('#status-generate').innerText.trim();"
                " return /^(NFE|Error)/.test(t) && t !== previous; }",
                arg=[previous],
                timeout=120_000,
            )
            previous = page.locator("#status-generate").inner_text().strip()
            results.append({"seconds_in_browser": round(time.perf_counter() - start, 3), "status": previous})
        browser.close()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "serve_startup.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as root:
        clone = Path(root) / "latentfm"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        python = clone / ".venv" / "bin" / "python"
        install = timed([sys.executable, "-m", "venv", ".venv"], clone)
        install += timed([str(python), "-m", "pip", "install", "--quiet", "torch==2.13.0"], clone)
        install += timed([str(python), "-m", "pip", "install", "--quiet", "-e", ".[ui]"], clone)
        port = free_port()
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        log = open(Path(root) / "serve.log", "w")  # noqa: SIM115  (closed below, after the server)
        command = [str(clone / ".venv" / "bin" / "latentfm"), "--quiet", "serve", "--model", "fashion-mnist"]
        server = subprocess.Popen([*command, "--port", str(port)], cwd=clone, stdout=log, stderr=subprocess.STDOUT)
        try:
            answer = wait_for(f"http://127.0.0.1:{port}/", server)
            try:
                generations = generate_in_browser(f"http://127.0.0.1:{port}/", args.chromium, args.repeats)
            except Exception as error:  # keep the start-up figures; say what failed
                generations = [{"error": f"{type(error).__name__}: {str(error).splitlines()[0]}"}]
        finally:
            server.terminate()
            server.wait(timeout=60)
            log.close()
        server_log = (Path(root) / "serve.log").read_text()[-2000:]
        versions = subprocess.check_output([str(python), "-m", "pip", "freeze"], text=True)
        record = {
            "install_s": round(install, 1),
            "serve_answers_s": round(answer, 1),
            "clone_to_page_s": round(install + answer, 1),
            "generate_8_images_8_nfe": generations,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "gradio": next((line for line in versions.splitlines() if line.startswith("gradio==")), None),
            "server_log_tail": server_log,
            "started": started,
        }
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
