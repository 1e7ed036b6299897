"""Plugins: built-ins through the same hooks, entry points, duplicates, unknown names, misspelled
hooks, autoload switch, failure isolation, observer hooks."""
from __future__ import annotations

import types
from importlib.metadata import EntryPoint

import numpy as np
import pytest
from PIL import Image

from bicycle import hookimpl, plugins
from bicycle.errors import ConfigError, PluginError
from bicycle.registry import InjectorSpec


def _module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, v in attrs.items():
        setattr(mod, k, v)
    return mod


def _injector_plugin(name: str, injector_name: str = "input"):
    from bicycle.builtin.injectors import _input

    @hookimpl
    def bicycle_injectors():
        return [InjectorSpec(injector_name, _input, "test")]

    return _module(name, bicycle_injectors=bicycle_injectors)


def test_builtins_are_registered_through_the_hooks():
    p = plugins.build_plugins(autoload=False)
    rows = {(kind, name): plugin for kind, name, plugin, _ in p.registry.listing()}
    assert rows[("backbone", "unet256")] == "bicycle.builtin.backbones"
    assert rows[("injector", "all")] == "bicycle.builtin.injectors"
    assert rows[("dataset", "shapes")] == "bicycle.builtin.datasets"
    for modname in plugins.BUILTIN_MODULES:  # nothing registered behind the hooks' back
        assert p.manager.get_plugin(modname) is not None


def test_a_name_registered_twice_names_both_plugins():
    with pytest.raises(PluginError, match=r"injector 'input' is registered twice: by plugin 'bicycle.builtin.injectors' and by plugin 'dupe'"):
        plugins.build_plugins([_injector_plugin("dupe")], autoload=False)


def test_unknown_name_lists_what_exists():
    reg = plugins.build_plugins(autoload=False).registry
    with pytest.raises(ConfigError, match=r"unknown injector 'al'.*available: all, all-film, input"):
        reg.injector("al")


def test_misspelled_hook_is_an_error():
    def bicycle_injector():  # missing the final "s"
        return []

    with pytest.raises(PluginError, match="bicycle_injector"):
        plugins.build_plugins([_module("typo", bicycle_injector=bicycle_injector)], autoload=False)


def _fake_entry_points(monkeypatch, *eps: EntryPoint):
    monkeypatch.setattr(plugins, "entry_points", lambda group: [ep for ep in eps if ep.group == group])


def test_third_party_plugins_load_from_the_entry_point_group(monkeypatch):
    import sys
    sys.modules["thirdparty_plugin"] = _injector_plugin("thirdparty_plugin", "film")
    _fake_entry_points(monkeypatch, EntryPoint("film", "thirdparty_plugin", "bicycle"))
    monkeypatch.delenv(plugins.AUTOLOAD_ENV)
    p = plugins.build_plugins()
    assert ("injector", "film", "film") in [(k, n, pl) for k, n, pl, _ in p.registry.listing()]
    monkeypatch.setenv(plugins.AUTOLOAD_ENV, "1")
    assert "film" not in plugins.build_plugins().registry.names("injector")
    monkeypatch.delenv(plugins.AUTOLOAD_ENV)
    monkeypatch.setenv(plugins.BLOCK_ENV, "film")
    assert "film" not in plugins.build_plugins().registry.names("injector")


def test_a_plugin_that_fails_to_import_is_named_with_how_to_disable_it(monkeypatch):
    _fake_entry_points(monkeypatch, EntryPoint("broken", "no_such_module_xyz", "bicycle"))
    monkeypatch.delenv(plugins.AUTOLOAD_ENV)
    with pytest.raises(PluginError, match=r"plugin 'broken' .*failed to import.*BICYCLE_DISABLE_PLUGINS=broken"):
        plugins.build_plugins()


def test_a_plugin_raising_in_a_hook_is_named():
    @hookimpl
    def bicycle_datasets():
        raise RuntimeError("boom")

    with pytest.raises(PluginError, match=r"plugin 'angry' raised in bicycle_datasets: RuntimeError: boom"):
        plugins.build_plugins([_module("angry", bicycle_datasets=bicycle_datasets)], autoload=False)


def test_observer_hooks_see_training(tmp_path, monkeypatch):
    from bicycle.train.loop import train
    from tiny import tiny_config

    seen, grids = [], []
    oracle_calls = _spy_oracle(monkeypatch)

    class Logger:
        __name__ = "logger"

        @hookimpl
        def bicycle_train_start(self, config, run_dir, start_step):
            seen.append(("start", start_step))

        @hookimpl
        def bicycle_train_step(self, step, metrics):
            seen.append(("step", step, sorted(metrics)))

        @hookimpl
        def bicycle_train_sample(self, step, path, image, measures):
            seen.append(("sample", step, path.is_file()))
            grids.append((image, measures))

        @hookimpl
        def bicycle_train_checkpoint(self, step, path):
            seen.append(("checkpoint", step, path.is_file()))

        @hookimpl
        def bicycle_train_end(self, step, interrupted):
            seen.append(("end", step, interrupted))

    p = plugins.build_plugins([Logger()], autoload=False)
    train(tiny_config(), tmp_path / "run", plugins=p, echo=lambda m: None)
    assert seen[0] == ("start", 0) and seen[-1] == ("end", 4, False)
    steps = [s for s in seen if s[0] == "step"]
    assert [s[1] for s in steps] == [2, 4]
    assert {"G_GAN", "G_L1", "kl", "z_L1", "D", "D2", "lr", "lambda_kl", "sec_per_step"} <= set(steps[0][2])
    assert ("sample", 2, True) in seen and ("checkpoint", 2, True) in seen and ("checkpoint", 4, True) in seen
    (image, measures), _ = grids  # steps 2 and 4
    png = np.asarray(Image.open(tmp_path / "run" / "samples" / "step_00000002.png").convert("RGB"))
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3 and not image.flags.writeable
    np.testing.assert_array_equal(image, png)
    assert set(measures) == {"z_sensitivity", "valid_rate", "modes_per_input"}  # shapes has an oracle
    assert all(type(v) is float for v in measures.values()) and 0 <= measures["valid_rate"] <= 1
    assert len(oracle_calls) == 4  # the two progress grids, then the final report (prior, aggregate posterior)


def _spy_oracle(monkeypatch) -> list[int]:
    """Record every oracle evaluation of the training loop's pictures."""
    import bicycle.train.samples as samples

    calls: list[int] = []
    real = samples.distinct_valid_modes

    def spy(oracle, a, outs):
        calls.append(outs.shape[0])
        return real(oracle, a, outs)

    monkeypatch.setattr(samples, "distinct_valid_modes", spy)
    return calls


def test_sample_measures_are_computed_only_for_a_listener(tmp_path, monkeypatch):
    from bicycle.train.loop import train
    from tiny import tiny_config

    class PathOnly:
        __name__ = "path_only"

        @hookimpl
        def bicycle_train_sample(self, step, path):
            pass

    class Measures:
        __name__ = "measures"

        @hookimpl
        def bicycle_train_sample(self, measures):
            raise RuntimeError("listens, then breaks")

    p = plugins.build_plugins([PathOnly(), Measures()], autoload=False)
    assert p.listening("bicycle_train_sample", "measures") and not p.listening("bicycle_train_sample", "image")
    p.disabled.add("measures")  # what notify does to an observer that raised
    assert not p.listening("bicycle_train_sample", "measures")
    oracle_calls = _spy_oracle(monkeypatch)
    train(tiny_config(**{"train.steps": 2}), tmp_path / "run", plugins=p, echo=lambda m: None)
    assert (tmp_path / "run" / "samples" / "step_00000002.png").is_file()
    assert len(oracle_calls) == 2  # the final report (prior, aggregate posterior) only: no listener asked for the grid


def test_import_bicycle_is_cheap():
    import subprocess
    import sys
    code = "import sys, bicycle; print(sorted(m for m in ('torch', 'bicycle.plugins', 'bicycle.builtin.backbones') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
