"""ONNX export (bicycle.export.onnx): G and E against PyTorch under onnxruntime at another batch size, the
metadata, modes restored, one clear line for a plugin backbone torch.export refuses, nothing written on failure,
and an honest report when onnxruntime is missing."""
from __future__ import annotations

import json
import sys
import types

import pytest
import torch
from torch import nn

pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from tiny import tiny_config  # noqa: E402

from bicycle import __version__, hookimpl, plugins  # noqa: E402
from bicycle.build import build_networks, resolve  # noqa: E402
from bicycle.errors import ExportError  # noqa: E402
from bicycle.export import onnx as export  # noqa: E402
from bicycle.registry import BackboneSpec  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _torchlib_registry_once():
    """Test speed only: torch.onnx rebuilds the same torchlib op registry (~2 s) for every export; here it is
    built once per opset for the module. Without the private hook (another torch), exports just take longer."""
    try:
        from torch.onnx._internal.exporter import _registration
        original = _registration.ONNXRegistry.from_torchlib
    except (ImportError, AttributeError):
        yield
        return
    cache: dict = {}

    def from_torchlib(cls, *args, **kwargs):
        key = (args, tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = original(*args, **kwargs)
        return cache[key]

    patch = pytest.MonkeyPatch()
    patch.setattr(_registration.ONNXRegistry, "from_torchlib", classmethod(from_torchlib))
    yield
    patch.undo()


def _nets(cfg, *extra):
    if extra:
        plugins.set_plugins(plugins.build_plugins(list(extra), autoload=False))
    registry = plugins.get_plugins().registry
    cfg = resolve(cfg, registry)
    return cfg, build_networks(cfg, registry, inference=True), registry.plugin_of("backbone", cfg.net.backbone)


def _run(path, feeds):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {k: v.numpy() for k, v in feeds.items()})


def _batch_dims(path):
    graph = onnx.load(str(path)).graph
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(graph.input) + list(graph.output)}


# the four G variants the task names, and the decoder-FiLM one; E (resnet, conv) rides along, pix2pix has none
CASES = [
    pytest.param({"net.inject": "input", "net.upsample": "basic", "net.encoder": "resnet"}, id="input-basic-E_resnet"),
    pytest.param({"net.inject": "all", "net.upsample": "bilinear", "net.encoder": "conv"}, id="all-bilinear-E_conv"),
    pytest.param({"net.inject": "input", "net.upsample": "bilinear", "train.model": "pix2pix", "net.in_channels": 1},
                 id="input-bilinear-noE-1to3"),
    pytest.param({"net.inject": "all", "net.upsample": "basic", "train.model": "pix2pix", "net.out_channels": 1},
                 id="all-basic-noE-3to1"),
    pytest.param({"net.inject": "all-film", "net.upsample": "basic", "net.encoder": "resnet"}, id="all_film-basic-E_resnet"),
    pytest.param({"net.inject": "all-film", "net.upsample": "nearest", "net.encoder": "resnet"},
                 id="all_film-nearest-E_resnet"),
]


@pytest.mark.parametrize("overrides", CASES)
def test_export_runs_in_onnxruntime_like_pytorch_at_another_batch_size(tmp_path, overrides):
    cfg, nets, plugin = _nets(tiny_config(**overrides))
    n = cfg.net
    nets.G.train()
    nets.G.downs[1].eval()  # a mixed state is restored as it was, module by module
    lines: list[str] = []
    path = tmp_path / "model.onnx"
    report = export.export_onnx(nets, cfg, path, backbone_plugin=plugin, step=42, echo=lines.append)

    has_e = nets.E is not None
    e_path = tmp_path / "model.encoder.onnx"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["model.onnx"] + ["model.encoder.onnx"] * has_e)
    assert report["files"] == {"G": str(path), **({"E": str(e_path)} if has_e else {})}
    assert report["sizes"]["G"] == path.stat().st_size
    assert set(report["max_abs_diff"]) == set(report["files"])
    assert all(0 <= d <= 1e-4 for d in report["max_abs_diff"].values()), report
    assert report["opset"] == export.OPSET and "dynamo=True" in report["exporter"]
    assert report["check"].startswith("checked with onnxruntime") and lines[-1] == report["check"]
    assert nets.G.training and not nets.G.downs[1].training and nets.G.downs[2].training
    # dynamic batch: the graph says N, and a batch of 2 (exported at 1, checked at 3) runs and matches
    dims = _batch_dims(path)
    assert dims == {"A": ["N", n.in_channels, 32, 32], "z": ["N", n.nz], "B": ["N", n.out_channels, 32, 32]}
    g = torch.Generator().manual_seed(5)
    a, z = torch.rand(2, n.in_channels, 32, 32, generator=g) * 2 - 1, torch.randn(2, n.nz, generator=g)
    nets.G.eval()
    with torch.no_grad():
        want = nets.G(a, z)
    (got,) = _run(path, {"A": a, "z": z})
    assert (torch.from_numpy(got) - want).abs().max() <= 1e-4
    if has_e:
        assert report["sizes"]["E"] == e_path.stat().st_size
        assert _batch_dims(e_path) == {"B": ["N", n.out_channels, 32, 32], "mu": ["N", n.nz], "logvar": ["N", n.nz]}
        b = torch.rand(2, n.out_channels, 32, 32, generator=g) * 2 - 1
        with torch.no_grad():
            mu, logvar = nets.E.eval()(b)
        got_mu, got_logvar = _run(e_path, {"B": b})
        assert (torch.from_numpy(got_mu) - mu).abs().max() <= 1e-4
        assert (torch.from_numpy(got_logvar) - logvar).abs().max() <= 1e-4
    _check_metadata(path, e_path if has_e else None, cfg, plugin)


def _check_metadata(path, e_path, cfg, plugin):
    n = cfg.net
    common = {
        "bicycle.format": "bicycle-onnx/1", "bicycle.version": __version__, "bicycle.step": "42",
        "bicycle.image_size": "32", "bicycle.nz": str(n.nz), "bicycle.in_channels": str(n.in_channels),
        "bicycle.out_channels": str(n.out_channels), "bicycle.backbone": n.backbone, "bicycle.backbone_plugin": plugin,
        "bicycle.injector": n.inject, "bicycle.encoder": n.encoder, "bicycle.model": cfg.train.model,
    }
    files = [(path, "G")] + ([(e_path, "E")] if e_path else [])
    for p, network in files:
        meta = export.read_metadata(p)
        assert {k: meta.get(k) for k in common} == common
        assert meta["bicycle.network"] == network
        assert json.loads(meta["bicycle.config"]) == cfg.to_dict()
        assert "u8 / 127.5 - 1" in meta["bicycle.normalization"] and "[-1, 1]" in meta["bicycle.normalization"]
        assert "ITU-R 601 luma" in meta["bicycle.channels"] and "repetition" in meta["bicycle.channels"]
    g_meta = export.read_metadata(path)
    assert g_meta["bicycle.inputs"].startswith(f"A: float32 [N, {n.in_channels}, 32, 32]; z: float32 [N, {n.nz}]")
    assert g_meta.get("bicycle.encoder_file") == (e_path.name if e_path else None)
    if e_path:
        assert export.read_metadata(e_path)["bicycle.generator_file"] == path.name


# --- plugin backbones --------------------------------------------------------------------------------------

class _Moody(nn.Module):
    """Branches on a tensor's value: a tracer would bake one branch in; torch.export refuses."""

    def __init__(self, args, injector):
        super().__init__()
        self.conv = nn.Conv2d(args.in_channels, args.out_channels, 3, padding=1)

    def forward(self, a, z):
        if z.mean().item() > 0:
            return torch.tanh(self.conv(a))
        return -torch.tanh(self.conv(a))


class _Plain(nn.Module):
    """A one-conv backbone that exports in a second: z tiled and concatenated at the input."""

    def __init__(self, args, injector):
        super().__init__()
        self.nz = args.nz
        self.conv = nn.Conv2d(args.in_channels + args.nz, args.out_channels, 3, padding=1)

    def forward(self, a, z):
        n, _, h, w = a.shape
        return torch.tanh(self.conv(torch.cat([a, z.view(n, self.nz, 1, 1).expand(n, self.nz, h, w)], 1)))


class _OneAtATime(_Plain):
    """Takes another path for a batch of one: torch.export would fix N at the example's 1."""

    def forward(self, a, z):
        if a.shape[0] == 1:
            return super().forward(a, z)
        return -super().forward(a, z)


def _backbone_plugin(plugin_name, name, cls):
    @hookimpl
    def bicycle_backbones():
        return [BackboneSpec(name, cls, lambda size: None, None, "test backbone")]

    mod = types.ModuleType(plugin_name)
    mod.bicycle_backbones = bicycle_backbones
    return mod


def test_an_unexportable_plugin_backbone_is_one_line_naming_it_and_writes_nothing(tmp_path, capfd):
    cfg, nets, plugin = _nets(tiny_config(**{"net.backbone": "moody", "train.model": "pix2pix"}),
                              _backbone_plugin("moody_plugin", "moody", _Moody))
    assert plugin == "moody_plugin"
    nets.G.train()
    with pytest.raises(ExportError) as info:
        export.export_onnx(nets, cfg, tmp_path / "m.onnx", backbone_plugin=plugin, echo=pytest.fail)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg and "\x1b" not in msg
    assert msg.startswith("cannot export backbone 'moody' of plugin 'moody_plugin' (injector 'all') to ONNX: ")
    assert "data-dependent" in msg and "test_export_onnx.py" in msg and "in forward" in msg  # where, in the plugin
    assert list(tmp_path.iterdir()) == []
    assert nets.G.training
    out, err = capfd.readouterr()
    assert "def forward" not in out + err and "torchvision" not in err  # the exporter's chatter is kept quiet


def test_without_onnxruntime_the_report_says_not_checked(tmp_path, monkeypatch):
    cfg, nets, plugin = _nets(tiny_config(**{"net.backbone": "plain", "train.model": "pix2pix"}),
                              _backbone_plugin("plain_plugin", "plain", _Plain))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    lines: list[str] = []
    report = export.export_onnx(nets, cfg, tmp_path / "m.onnx", backbone_plugin=plugin, echo=lines.append)
    expected = "not checked: onnxruntime is not installed (pip install 'bicycle[onnx]')"
    assert report["check"] == expected and report["max_abs_diff"] == {} and not report["checked"]
    assert lines[-1] == expected
    assert report["files"] == {"G": str(tmp_path / "m.onnx")} and (tmp_path / "m.onnx").stat().st_size > 0
    assert export.read_metadata(tmp_path / "m.onnx")["bicycle.backbone_plugin"] == "plain_plugin"


def test_a_failed_check_names_the_file_and_the_difference_and_writes_nothing(tmp_path, monkeypatch):
    cfg, nets, plugin = _nets(tiny_config(**{"net.backbone": "plain", "train.model": "pix2pix"}),
                              _backbone_plugin("plain_plugin", "plain", _Plain))
    monkeypatch.setattr(export, "TOLERANCE", -1.0)  # no difference passes
    (tmp_path / "m.onnx").write_bytes(b"old")
    with pytest.raises(ExportError, match=r"^ONNX check failed for .*m\.onnx: max abs difference \S+ between "
                                          r"onnxruntime and PyTorch at batch 3 \(tolerance -1\); nothing written$"):
        export.export_onnx(nets, cfg, tmp_path / "m.onnx", backbone_plugin=plugin, echo=lambda line: None)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"] and (tmp_path / "m.onnx").read_bytes() == b"old"


def test_a_backbone_that_fixes_the_batch_size_is_refused(tmp_path):
    cfg, nets, plugin = _nets(tiny_config(**{"net.backbone": "single", "train.model": "pix2pix"}),
                              _backbone_plugin("single_plugin", "single", _OneAtATime))
    with pytest.raises(ExportError, match=r"^cannot export backbone 'single' of plugin 'single_plugin' \(injector 'all'\) "
                                          r"to ONNX with a dynamic batch size: the network fixes the batch dimension "
                                          r"of A, z, B \(at 1\)$"):
        export.export_onnx(nets, cfg, tmp_path / "m.onnx", backbone_plugin=plugin, check=False, echo=pytest.fail)
    assert list(tmp_path.iterdir()) == []
