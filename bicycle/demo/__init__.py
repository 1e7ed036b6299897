"""``bicycle demo``: a local web page to draw or upload an input and explore its many outputs."""
from __future__ import annotations

from collections.abc import Callable

EXAMPLES = 6


def example_inputs(model, echo: Callable[[str], None]):
    """(the first EXAMPLES validation inputs A [N, C, S, S] as RGB Pillow images, the tensor) of the dataset the
    model was trained on; ([], None) when it cannot be read here (a folder on another machine), said via echo."""
    import dataclasses

    from bicycle.inference.model import to_pil
    from bicycle.build import build_eval_dataset
    from bicycle.errors import BicycleError
    from bicycle.plugins import get_plugins

    cfg = model.config
    try:
        ds = build_eval_dataset(dataclasses.replace(cfg), get_plugins().registry, "the demo's examples",
                                echo=echo, model_channels=True)
        a, _ = ds.get_batch(list(range(min(EXAMPLES, len(ds)))))
    except (BicycleError, OSError) as e:
        echo(f"demo: no example inputs ({str(e).splitlines()[0]})")
        return [], None
    return [to_pil(x).convert("RGB") for x in a], a


def serve(path: str, host: str = "127.0.0.1", port: int = 7860, device: str = "auto", invert: bool = False,
          echo: Callable[[str], None] = print, block: bool = True, weights: str = "auto"):
    """Load the model at ``path`` (``weights``: see :func:`bicycle.inference.model.load`) and serve its page; returns
    the page (``block=False``: at once)."""
    import importlib.util

    from bicycle.errors import BicycleError
    if importlib.util.find_spec("gradio") is None:
        raise BicycleError("the demo page needs Gradio, not installed here: pip install 'bicycle[demo]'")
    from bicycle.demo.app import Demo, build, launch
    from bicycle.demo.inputs import polarity_of
    from bicycle.inference.model import load

    model = load(path, device, weights)
    echo(model.weights_note)
    examples, a = example_inputs(model, echo)
    demo = Demo(model, examples, polarity_of(a, invert))
    page = build(demo)
    echo(f"demo: {demo.name} on http://{host}:{port} (Ctrl+C stops it)")
    try:
        return launch(page, host, port, block)
    except OSError as e:
        raise BicycleError(f"cannot serve the demo on {host}:{port}: {str(e).splitlines()[0]} (another --port?)") from None
