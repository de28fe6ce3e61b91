"""``latentfm serve``: a web page to try models (Gradio, the optional extra ``latentfm[ui]``).

One page for every model given: a tab for each task those models can do (Generate for class and unconditional
models; Inpaint, Upsample, Semantic for models of those tasks); choosing a model selects its tab. Every action
returns the images, the exact NFE and the time, or one line saying what is wrong with the input; never a traceback.
The handlers (``generate_images``, ``inpaint_images``, ...) are plain functions of a pipeline and the page's
values, tested without a browser; tests/test_serve.py drives the page itself in headless Chromium.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from latentfm.errors import LatentFMError
from latentfm.image_io import to_uint8
from latentfm.pipeline import FlowPipeline
from latentfm.sampling import ADAPTIVE_SOLVERS, FIXED_SOLVERS, SamplerSettings

DISPLAY = 224  # images are enlarged (nearest neighbour, by a whole factor) to about this many pixels
log = logging.getLogger("latentfm.serve")


@dataclass
class ModelShelf:
    """The models of a page by name, each loaded on first use and kept."""

    names: list[str]
    device: torch.device
    refiner: str | None = None
    loaded: dict[str, FlowPipeline] = field(default_factory=dict)

    def get(self, name: str) -> FlowPipeline:
        """The pipeline of ``name`` (one of ``names``), with the refiner when one was given."""
        if name not in self.loaded:
            pipe = FlowPipeline.from_pretrained(name, device=self.device)
            self.loaded[name] = pipe.with_refiner(self.refiner) if self.refiner else pipe
        return self.loaded[name]


def enlarged(images: torch.Tensor) -> list[np.ndarray]:
    """uint8 HxWxC images in [-1, 1] enlarged by a whole factor for the page (grey as HxW)."""
    factor = max(1, DISPLAY // images.shape[-1])
    big = torch.nn.functional.interpolate(images.float(), scale_factor=factor, mode="nearest")
    array = to_uint8(big)
    return [image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image for image in array]


def sampler(
    pipe: FlowPipeline, solver: str, nfe: float, cfg: float, low: float, high: float, turbo: str
) -> SamplerSettings:
    """The page's sampler fields as settings (the recipe's where a field is left empty)."""
    given = {"cfg": cfg, "guidance_interval": (low, high)}
    if turbo:
        given["turbo"] = turbo
    elif solver in ADAPTIVE_SOLVERS:
        given.update(solver=solver, schedule="uniform")
    else:
        if nfe is None or nfe < 1 or nfe != int(nfe):
            raise LatentFMError(f"NFE {nfe}: give a whole number of at least 1")
        given.update(solver=solver, nfe=int(nfe))
    return pipe.sampler.with_given(lambda name, value: f"{name} {value}", **given)


def class_labels(pipe: FlowPipeline, chosen: list[str] | str | None, count: int) -> torch.Tensor | None:
    """``count`` labels cycling over the chosen class names (all classes when none is chosen)."""
    if pipe.num_classes == 0:
        return None
    names = pipe.class_names or [str(index) for index in range(pipe.num_classes)]
    chosen = [chosen] if isinstance(chosen, str) else list(chosen or names)
    unknown = [name for name in chosen if name not in names]
    if unknown:
        raise LatentFMError(f"class {unknown[0]!r} is not one this model knows ({', '.join(names)})")
    indices = [names.index(name) for name in chosen]
    return torch.tensor([indices[i % len(indices)] for i in range(count)])


def report(stats: Any, seconds: float) -> str:
    """The status line of a finished action."""
    refiner = f", {stats.refiner_calls} refiner calls" if stats.refiner_calls else ""
    return f"NFE {stats.nfe} per sample{refiner}; {seconds:.2f} s"


def generate_images(pipe: FlowPipeline, chosen: list[str], seed: float, count: float, *sampling: Any) -> tuple:
    """Generate ``count`` images of the chosen classes: (images for the page, status line)."""
    count, seed = _whole(count, "count", 1, 64), _whole(seed, "seed", 0, 2**31 - 1)
    settings = sampler(pipe, *sampling)
    labels = class_labels(pipe, chosen, count)
    start = time.perf_counter()
    images, stats = pipe.generate(labels, n=count, seed=seed, settings=settings)
    return enlarged(images), report(stats, time.perf_counter() - start)


def inpaint_images(pipe: FlowPipeline, editor: dict | None, seed: float, count: float, *sampling: Any) -> tuple:
    """Complete the painted part of the editor's image (``count`` completions; known pixels kept exactly)."""
    image, mask = editor_inputs(pipe, editor)
    count, seed = _whole(count, "count", 1, 16), _whole(seed, "seed", 0, 2**31 - 1)
    settings = sampler(pipe, *sampling)
    start = time.perf_counter()
    completions, stats = pipe.inpaint(image, mask, n=count, seed=seed, settings=settings)
    return enlarged(completions), report(stats, time.perf_counter() - start)


def upsample_images(pipe: FlowPipeline, image: np.ndarray | None, seed: float, *sampling: Any) -> tuple:
    """The model's up-sampled version of a low-resolution image."""
    low = _image_tensor(pipe, image, "the low-resolution image", pipe.image_shape[-1] // pipe.task.factor)
    settings = sampler(pipe, *sampling)
    start = time.perf_counter()
    images, stats = pipe.upsample(low[None], seed=_whole(seed, "seed", 0, 2**31 - 1), settings=settings)
    return enlarged(images), report(stats, time.perf_counter() - start)


def semantic_images(pipe: FlowPipeline, image: np.ndarray | None, seed: float, count: float, *sampling: Any) -> tuple:
    """Images that follow a map of class ids (a grey PNG whose values are the ids)."""
    if image is None:
        raise LatentFMError("upload a map first: a grey PNG of class ids at the model's size")
    ids = np.asarray(image)
    ids = ids[..., 0] if ids.ndim == 3 else ids
    size = pipe.image_shape[-1]
    if ids.shape != (size, size):
        raise LatentFMError(f"the map is {ids.shape[1]}x{ids.shape[0]}; this model follows {size}x{size} maps")
    count = _whole(count, "count", 1, 16)
    maps = torch.from_numpy(ids.astype(np.int64)).expand(count, size, size)
    settings = sampler(pipe, *sampling)
    start = time.perf_counter()
    images, stats = pipe.generate(
        None, n=count, seed=_whole(seed, "seed", 0, 2**31 - 1), settings=settings, semantic=maps
    )
    return enlarged(images), report(stats, time.perf_counter() - start)


def editor_inputs(pipe: FlowPipeline, editor: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The image (``[C, H, W]`` in [-1, 1]) and mask (``[1, H, W]``, 1 = painted) of the page's image editor: its
    background at the model's size or a whole multiple of it (averaged back down), the painted layers' alpha."""
    if not editor or editor.get("background") is None:
        raise LatentFMError("upload an image (or press Example) and paint the part to generate")
    background = np.asarray(editor["background"])
    size = pipe.image_shape[-1]
    factor = background.shape[0] // size
    if background.shape[0] != background.shape[1] or factor < 1 or background.shape[0] % size:
        raise LatentFMError(
            f"the image is {background.shape[1]}x{background.shape[0]}; this model inpaints {size}x{size} images "
            "(or whole multiples of that size)"
        )
    painted = np.zeros(background.shape[:2], dtype=bool)
    for layer in editor.get("layers") or []:
        layer = np.asarray(layer)
        painted |= layer[..., -1] > 0 if layer.ndim == 3 else layer > 0
    if not painted.any():
        raise LatentFMError("no mask painted: paint over the part of the image to generate")
    pixels = _pixels(background, pipe.image_shape[0])
    image = torch.nn.functional.avg_pool2d(pixels[None], factor)[0].round() / 127.5 - 1
    mask = torch.nn.functional.max_pool2d(torch.from_numpy(painted).float()[None, None], factor)[0]
    return image, mask


def _image_tensor(pipe: FlowPipeline, image: np.ndarray | None, what: str, size: int) -> torch.Tensor:
    """An uploaded image as ``[C, size, size]`` in [-1, 1], refused in one line at another size."""
    if image is None:
        raise LatentFMError(f"upload {what} first ({size}x{size})")
    array = np.asarray(image)
    if array.shape[:2] != (size, size):
        raise LatentFMError(f"{what} is {array.shape[1]}x{array.shape[0]}; this model takes {size}x{size}")
    return _pixels(array, pipe.image_shape[0]) / 127.5 - 1


def _pixels(array: np.ndarray, channels: int) -> torch.Tensor:
    """A page's uint8 image (HxW, HxWx3 or HxWx4) as float ``[channels, H, W]`` in 0..255 (grey: the mean)."""
    array = array.astype(np.float32)
    array = array[..., None] if array.ndim == 2 else array[..., :3]
    if channels == 1 and array.shape[-1] == 3:
        array = array.mean(-1, keepdims=True)
    return torch.from_numpy(array).permute(2, 0, 1).expand(channels, -1, -1).contiguous()


def _whole(value: float | None, name: str, low: int, high: int) -> int:
    """A whole number from the page, refused in one line outside ``low..high``."""
    if value is None or value != int(value) or not low <= value <= high:
        raise LatentFMError(f"{name} {value}: give a whole number from {low} to {high}")
    return int(value)


def guarded(action: Callable[..., tuple], shelf: ModelShelf, task: str) -> Callable[..., tuple]:
    """``action(pipe, ...)`` of a ``task``'s tab for the page: the chosen model's pipeline first; a problem becomes
    the status line (a LatentFMError's own words; anything else one line, its traceback in the server's log)."""

    def run(model: str, *values: Any) -> tuple:
        try:
            pipe = shelf.get(model)
            if pipe.task.kind != task:
                raise LatentFMError(
                    f"{model} is a {pipe.task.kind} model; this tab needs a model of the {task} task: choose one"
                )
            images, status = action(pipe, *values)
            return images, status
        except LatentFMError as error:
            return [], f"Error: {error}"
        except Exception as error:  # the page never shows a traceback; the server's log keeps it
            log.exception("serve: %s failed", action.__name__)
            return [], f"Error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"

    return run


def example_image(pipe: FlowPipeline) -> np.ndarray:
    """An image to paint on when the user has none: the model's own completion of a blank image whose mask
    covers it all (seed 0), enlarged for painting."""
    channels, size, _ = pipe.image_shape
    blank, everything = torch.zeros(channels, size, size), torch.ones(1, size, size)
    image, _ = pipe.inpaint(blank, everything, n=1, seed=0)
    return enlarged(image)[0]


def build_page(shelf: ModelShelf) -> Any:
    """The Gradio page of the shelf's models: the model, the sampler and the seed on top; below, a tab for each task
    the models can do, the chosen model's selected (Gradio cannot yet hide or rebuild tabs reliably)."""
    import gradio as gr

    first = shelf.get(shelf.names[0])
    with gr.Blocks(title="latentfm") as page:
        gr.Markdown("# latentfm\nFlow-matching models: pick one, set the sampler, press the button.")
        model = gr.Dropdown(shelf.names, value=shelf.names[0], label="model", elem_id="model")
        with gr.Accordion("sampler", open=True), gr.Row():
            solver = gr.Dropdown(
                [*FIXED_SOLVERS, *ADAPTIVE_SOLVERS],
                value=first.sampler.solver,
                interactive=True,
                label="solver",
                elem_id="solver",
            )
            nfe = gr.Number(value=first.sampler.budget or 8, interactive=True, label="NFE", precision=0, elem_id="nfe")
            cfg = gr.Number(value=first.sampler.cfg, interactive=True, label="guidance weight", elem_id="cfg")
            low, high = first.sampler.guidance_interval or (0.0, 1.0)
            low = gr.Slider(0, 1, value=low, step=0.05, interactive=True, label="guide from t", elem_id="low")
            high = gr.Slider(0, 1, value=high, step=0.05, interactive=True, label="guide until t", elem_id="high")
            turbo = gr.Textbox(
                value="", interactive=True, label="turbo program (with a refiner)", visible=bool(shelf.refiner)
            )
            seed = gr.Number(value=0, interactive=True, label="seed", precision=0, elem_id="seed")
        sampling = [solver, nfe, cfg, low, high, turbo]

        kinds = list(dict.fromkeys(shelf.get(name).task.kind for name in shelf.names))
        with gr.Tabs(selected=first.task.kind) as tabs:
            built = {kind: TAB_BUILDERS[kind](gr, shelf, first, [model, seed], sampling) for kind in kinds}

        def chosen(name: str) -> list:
            """The chosen model's tab, its recipe sampler in the sampler's fields and its classes."""
            pipe = shelf.get(name)
            settings = pipe.sampler
            low, high = settings.guidance_interval or (0.0, 1.0)
            names = pipe.class_names or [str(i) for i in range(pipe.num_classes)]
            classes = [gr.Dropdown(choices=names, value=names[:1])] if "class" in built else []
            return [
                gr.Tabs(selected=pipe.task.kind),
                settings.solver,
                settings.budget or 8,
                settings.cfg,
                low,
                high,
                *classes,
            ]

        classes = [built["class"]] if "class" in built else []
        model.change(chosen, [model], [tabs, solver, nfe, cfg, low, high, *classes])
    return page


def _results(gr: Any, shelf: ModelShelf, task: str, button: str, action: Callable, inputs: list, columns: int) -> None:
    """A tab's button, its gallery and status line, and the guarded ``action`` the button runs on ``inputs``."""
    tab = "generate" if task == "class" else task
    pressed = gr.Button(button, variant="primary", elem_id=tab)
    gallery = gr.Gallery(label="images", columns=columns, format="png", elem_id=f"gallery-{tab}")
    status = gr.Markdown(elem_id=f"status-{tab}")
    pressed.click(guarded(action, shelf, task), inputs, [gallery, status])


def _generate_tab(gr: Any, shelf: ModelShelf, pipe: FlowPipeline, common: list, sampling: list) -> Any:
    model, seed = common
    with gr.Tab("Generate", id="class"):
        names = pipe.class_names or [str(i) for i in range(pipe.num_classes)]
        classes = gr.Dropdown(
            names, value=names[:1], multiselect=True, interactive=True, label="classes", elem_id="classes"
        )
        count = gr.Slider(1, 64, value=8, step=1, interactive=True, label="images", elem_id="count")
        _results(gr, shelf, "class", "Generate", generate_images, [model, classes, seed, count, *sampling], 8)
    return classes


def _inpaint_tab(gr: Any, shelf: ModelShelf, pipe: FlowPipeline, common: list, sampling: list) -> None:
    model, seed = common
    with gr.Tab("Inpaint", id="inpaint"):
        editor = gr.ImageEditor(
            type="numpy",
            image_mode="RGBA",
            interactive=True,
            format="png",  # lossless: the kept pixels must come back exactly
            label="paint the part to generate",
            elem_id="editor",
            brush=gr.Brush(default_size=24, colors=["#ff0000"], color_mode="fixed"),
            layers=False,
        )
        example = gr.Button("Example image", elem_id="example")
        count = gr.Slider(1, 16, value=4, step=1, interactive=True, label="completions", elem_id="inpaint-count")
        example.click(lambda name: example_image(shelf.get(name)), [model], [editor])
        _results(gr, shelf, "inpaint", "Inpaint", inpaint_images, [model, editor, seed, count, *sampling], 4)


def _upsample_tab(gr: Any, shelf: ModelShelf, pipe: FlowPipeline, common: list, sampling: list) -> None:
    model, seed = common
    with gr.Tab("Upsample", id="upsample"):
        low_image = gr.Image(
            type="numpy", format="png", interactive=True, label="low-resolution image", elem_id="low-image"
        )
        _results(gr, shelf, "upsample", "Upsample", upsample_images, [model, low_image, seed, *sampling], 4)


def _semantic_tab(gr: Any, shelf: ModelShelf, pipe: FlowPipeline, common: list, sampling: list) -> None:
    model, seed = common
    with gr.Tab("Semantic", id="semantic"):
        map_image = gr.Image(
            type="numpy", image_mode="L", format="png", interactive=True, label="map of class ids", elem_id="map-image"
        )
        count = gr.Slider(1, 16, value=4, step=1, interactive=True, label="images", elem_id="map-count")
        inputs = [model, map_image, seed, count, *sampling]
        _results(gr, shelf, "semantic", "Follow the map", semantic_images, inputs, 4)


TAB_BUILDERS = {"class": _generate_tab, "inpaint": _inpaint_tab, "upsample": _upsample_tab, "semantic": _semantic_tab}


def check_port(host: str, port: int) -> None:
    """Refuse, in one line, a port another program already listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            raise LatentFMError(f"--port {port}: {host}:{port} is in use; give another --port") from None


def serve(models: list[str], host: str, port: int, device: torch.device, refiner: str | None = None) -> None:
    """Load the first model, then serve the page on ``host:port`` until interrupted."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # the page never reaches out to the internet
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise LatentFMError("latentfm serve needs Gradio: pip install 'latentfm[ui]'") from None
    check_port(host, port)
    shelf = ModelShelf(models, device, refiner)
    page = build_page(shelf)
    print(f"serving {', '.join(models)} on http://{host}:{port}", flush=True)
    page.launch(server_name=host, server_port=port, show_error=False, quiet=True)
