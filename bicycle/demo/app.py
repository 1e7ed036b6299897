"""The demo page (``bicycle demo RUN``): draw or upload an input and explore its many outputs.

Built with Gradio (the optional extra ``bicycle[demo]``); every model call goes through
:class:`bicycle.Model` (``translate``, ``encode``, ``random_z``). Handlers never raise to the page: a
problem becomes one line in the status box (and nothing else changes).

Named API endpoints (``gradio_client``): ``generate`` (input, n, seed, z source, temperature, fill) ->
gallery, status; ``reference`` (input, reference file) -> image, status; ``walk`` (input, code values) ->
image, status; ``interpolate`` (input, first, last, frames) -> GIF, status.
"""

import functools
import itertools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from bicycle.demo.inputs import CANVAS, MAX_UPLOAD_BYTES, Polarity, brush_size, drawing, fill_enclosed, read_upload
from bicycle.errors import BicycleError
from bicycle.inference.posterior import Z_SOURCES

MAX_OUTPUTS = 16
MAX_SLIDERS = 16
MAX_FRAMES = 24
SLIDER_RANGE = 3.0
CONCURRENCY = 2
QUEUE_SIZE = 64
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO_FONTS = ["ui-monospace", "monospace"]


@dataclass
class Session:
    """Per browser session: the codes of the last generated outputs and which one the sliders start from."""

    codes: torch.Tensor | None = None  # [N, nz]
    seed: int | None = None
    source: str = ""
    picked: int = 0
    notes: list[str] = field(default_factory=list)


def _guarded(n_outputs: int) -> Callable:
    """A handler returns (outputs..., status): any error becomes one status line, the other outputs unchanged."""
    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args):
            import gradio as gr
            try:
                return fn(*args)
            except BicycleError as e:
                message = str(e).splitlines()[0] if str(e) else type(e).__name__
            except Exception as e:  # noqa: BLE001 - the page shows one line, never a traceback
                message = f"unexpected error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            return (*([gr.update()] * n_outputs), f"**Problem:** {message}")
        return run
    return wrap


class Demo:
    """The page's logic, independent of the widgets (``build`` lays them out)."""

    def __init__(self, model, examples: list[Image.Image], polarity: Polarity) -> None:
        self.model, self.examples, self.polarity = model, examples, polarity
        # Outputs are handed to Gradio as files with names never used twice: Gradio caches images by content,
        # and rewriting one cached file while another request downloads it cuts that download short.
        self._files = tempfile.TemporaryDirectory(prefix="bicycle-demo-")
        self._count = itertools.count()
        cfg = model.config
        self.uses_z = cfg.train.model != "pix2pix"
        self.has_encoder = model.has_encoder
        self.sliders = min(model.nz, MAX_SLIDERS) if self.uses_z else 0
        self.filled_inputs = False
        self.name = (f"{cfg.train.model} · {cfg.net.backbone}/{cfg.net.inject} · {cfg.net.image_size} px · "
                     f"step {model.step} · {model.path}")

    def _save(self, image: Image.Image, suffix: str = ".png", **save: object) -> str:
        path = Path(self._files.name) / f"{next(self._count):08d}{suffix}"
        image.save(path, **save)
        return str(path)

    # -- codes ------------------------------------------------------------------------------------------
    def source(self, choice: str, temperature: float):
        """The :class:`~bicycle.inference.zsource.ZSource` for the page's choice (auto: the posterior fitted for
        this checkpoint when there is one, else the prior, saying why)."""
        if choice not in Z_SOURCES:
            raise BicycleError(f"z source must be one of {', '.join(Z_SOURCES)}, got {choice!r}")
        return self.model.z_source(choice, temperature)

    def _input(self, value: object, fill: bool = False) -> Image.Image:
        img = drawing(value, self.polarity)
        return fill_enclosed(img, self.polarity) if fill else img

    # -- handlers ---------------------------------------------------------------------------------------
    def generate(self, value: object, n: float, seed: float, choice: str, temperature: float, fill: bool,
                 session: Session | None):
        session = session or Session()
        n = 1 if not self.uses_z else int(n)
        if not 1 <= n <= MAX_OUTPUTS:
            raise BicycleError(f"outputs: choose 1 to {MAX_OUTPUTS}, got {n}")
        seed = int(seed)
        inp = self._input(value, fill)
        source = self.source(choice if self.uses_z else "prior", float(temperature))
        how = source.describe() if self.uses_z else "none (pix2pix ignores z)"
        codes = self.model.random_z(1, n, seed, z_source=source)[0]
        outs = self.model.translate(inp, z=codes)
        session.codes, session.seed, session.source, session.picked = codes, seed, source.name, 0
        gallery = [(self._save(im), f"#{i} · seed {seed} · z {source.name}") for i, im in enumerate(outs)]
        status = f"{len(outs)} output(s) by **{self.name}**; z source: {how}; seed {seed}; temperature {float(temperature):g}"
        return gallery, session, *self.slider_values(session), status

    def slider_values(self, session: Session) -> list[float]:
        if not self.sliders:
            return []
        code = session.codes[session.picked] if session.codes is not None else torch.zeros(self.model.nz)
        return [round(float(v), 2) for v in code[:self.sliders]]

    def pick(self, index: int, session: Session | None):
        session = session or Session()
        if session.codes is None or not 0 <= index < len(session.codes):
            raise BicycleError("generate outputs first, then pick one")
        session.picked = index
        return session, *self.slider_values(session), f"output #{index} picked: the sliders hold its code"

    def walk(self, value: object, fill: bool, session: Session | None, *values: float):
        session = session or Session()
        code = session.codes[session.picked].clone() if session.codes is not None else torch.zeros(self.model.nz)
        code[:len(values)] = torch.tensor([float(v) for v in values])
        out = self._save(self.model.translate(self._input(value, fill), z=code[None])[0])
        shown = ", ".join(f"{v:+.2f}" for v in code[:self.sliders].tolist())
        return out, f"code ({shown}{', ...' if self.model.nz > self.sliders else ''}) by **{self.name}**"

    def reference(self, value: object, fill: bool, path: str | None):
        if not self.has_encoder:
            raise BicycleError("this model has no encoder: it cannot take the style of a reference")
        ref = read_upload(path, "the reference")
        out = self._save(self.model.translate(self._input(value, fill), reference=ref)[0])
        return out, f"in the style of {Path(path).name} (its code from the encoder) by **{self.name}**"

    def interpolate(self, value: object, fill: bool, first: float, last: float, frames: float, session: Session | None):
        session = session or Session()
        if session.codes is None:
            raise BicycleError("generate outputs first: the walk runs between two of them")
        i, j, frames = int(first), int(last), int(frames)
        if not (0 <= i < len(session.codes) and 0 <= j < len(session.codes)):
            raise BicycleError(f"pick outputs between #0 and #{len(session.codes) - 1}")
        if not 2 <= frames <= MAX_FRAMES:
            raise BicycleError(f"frames: choose 2 to {MAX_FRAMES}, got {frames}")
        images = self.model.interpolate(self._input(value, fill), session.codes[i], session.codes[j], frames)
        rgb = [im.convert("RGB") for im in images]
        path = self._save(rgb[0], ".gif", save_all=True, append_images=rgb[1:], duration=120, loop=0)
        return path, f"{frames} frames from output #{i} to #{j} (seed {session.seed}, z {session.source})"

    def load_upload(self, path: str | None):
        img = read_upload(path, "the input")
        img = img.resize((CANVAS, CANVAS), Image.Resampling.BICUBIC)
        return {"background": img, "layers": [], "composite": img}, f"loaded {Path(path).name} as the input"


def build(demo: Demo):
    """The Gradio Blocks of the page."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    blank = demo.polarity.blank()
    with gr.Blocks(title="bicycle demo", analytics_enabled=False, delete_cache=(600, 3600)) as page:
        gr.Markdown(f"## bicycle: one input, many outputs\n{demo.name}")
        session = gr.State(Session())
        status = gr.Markdown("Draw an input (or upload one), then **Generate**.", elem_id="status")
        with gr.Row():
            with gr.Column():
                editor = gr.ImageEditor(
                    value={"background": blank, "layers": [], "composite": blank}, type="pil", image_mode="RGB",
                    canvas_size=(CANVAS, CANVAS), fixed_canvas=True, sources=(), transforms=(), layers=False,
                    brush=gr.Brush(colors=[demo.polarity.stroke_hex], default_color=demo.polarity.stroke_hex,
                                   color_mode="fixed", default_size=brush_size(demo.model.image_size)),
                    eraser=gr.Eraser(default_size=brush_size(demo.model.image_size) * 2),
                    label="input (draw here)", elem_id="canvas", height=CANVAS + 120)
                fill = gr.Checkbox(False, label="fill enclosed regions (for models trained on filled shapes)",
                                   elem_id="fill")
                upload = gr.File(label="or upload an input image", type="filepath", elem_id="upload")
                if demo.examples:
                    examples = gr.Gallery([(im, f"example {i}") for i, im in enumerate(demo.examples)],
                                          label="the run's validation inputs (click one)", columns=6, height=120,
                                          allow_preview=False, elem_id="examples")
            with gr.Column():
                with gr.Row():
                    n = gr.Slider(1, MAX_OUTPUTS, value=8 if demo.uses_z else 1, step=1, label="outputs",
                                  visible=demo.uses_z, elem_id="n")
                    seed = gr.Number(0, precision=0, label="seed", minimum=0, elem_id="seed")
                with gr.Row(visible=demo.uses_z):
                    choice = gr.Radio(list(Z_SOURCES), value="auto", label="z source", elem_id="zsource")
                    temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.05, label="temperature")
                go = gr.Button("Generate", variant="primary", elem_id="generate")
                gallery = gr.Gallery(label="outputs (click one to steer it with the sliders)", columns=4,
                                     elem_id="gallery", allow_preview=False)
        sliders = []
        with gr.Accordion("steer one output: its code, one slider per latent dimension", open=True,
                          visible=demo.uses_z):
            with gr.Row():
                for k in range(demo.sliders):
                    sliders.append(gr.Slider(-SLIDER_RANGE, SLIDER_RANGE, value=0.0, step=0.05, label=f"z[{k}]",
                                             elem_id=f"z{k}", min_width=120))
            if demo.model.nz > demo.sliders:
                gr.Markdown(f"the first {demo.sliders} of {demo.model.nz} dimensions; the others keep the output's values")
            walked = gr.Image(label="the steered output", type="filepath", elem_id="walked", height=CANVAS)
        with gr.Accordion("walk between two outputs (animated GIF)", open=False, visible=demo.uses_z):
            with gr.Row():
                first = gr.Number(0, precision=0, label="from output #")
                last = gr.Number(1, precision=0, label="to output #")
                frames = gr.Slider(2, MAX_FRAMES, value=8, step=1, label="frames")
            walk_go = gr.Button("Make the walk")
            gif = gr.Image(label="walk", type="filepath", elem_id="gif", height=CANVAS)
        with gr.Accordion("take the style of a reference image", open=False, visible=demo.has_encoder and demo.uses_z):
            ref = gr.File(label="reference image", type="filepath", elem_id="reference")
            ref_go = gr.Button("Use its style")
            styled = gr.Image(label="in the reference's style", type="filepath", height=CANVAS, elem_id="styled")

        go.click(_guarded(2 + demo.sliders)(demo.generate), [editor, n, seed, choice, temperature, fill, session],
                 [gallery, session, *sliders, status], api_name="generate")
        upload.upload(_guarded(1)(demo.load_upload), [upload], [editor, status], api_name=False)

        def picked(session_value, evt: gr.SelectData):
            return _guarded(1 + demo.sliders)(demo.pick)(evt.index, session_value)
        gallery.select(picked, [session], [session, *sliders, status], api_name=False)
        for slider in sliders:
            slider.release(_guarded(1)(demo.walk), [editor, fill, session, *sliders], [walked, status], api_name=False)
        walk_api = gr.Button(visible=False)
        walk_api.click(_guarded(1)(demo.walk), [editor, fill, session, *sliders], [walked, status], api_name="walk")
        walk_go.click(_guarded(1)(demo.interpolate), [editor, fill, first, last, frames, session], [gif, status],
                      api_name="interpolate")
        ref_go.click(_guarded(1)(demo.reference), [editor, fill, ref], [styled, status], api_name="reference")
        if demo.examples:
            def example(evt: gr.SelectData):
                img = demo.examples[evt.index].resize((CANVAS, CANVAS), Image.Resampling.NEAREST)
                return {"background": img, "layers": [], "composite": img}, f"example {evt.index} loaded as the input"
            examples.select(example, None, [editor, status], api_name=False)
    page.queue(default_concurrency_limit=CONCURRENCY, max_size=QUEUE_SIZE)
    return page


def launch(page, host: str = "127.0.0.1", port: int = 7860, block: bool = True):
    """Serve the page on ``host``:``port`` (no share tunnel, no analytics, system fonts only); returns the page
    (``page.close()`` stops it) once serving, or when stopped with ``block``."""
    import gradio as gr

    theme = gr.themes.Default(font=SYSTEM_FONTS, font_mono=MONO_FONTS)
    page.launch(server_name=host, server_port=port, share=False, inbrowser=False, quiet=True,
                       prevent_thread_lock=not block, theme=theme, max_file_size=MAX_UPLOAD_BYTES,
                       footer_links=[], show_error=False)
    return page
