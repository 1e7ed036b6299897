"""Run bicycle's conformance kit on this plugin's components, loaded through its entry point."""
from bicycle.testing.fixtures import InjectorConformance


class TestTemplateAdd(InjectorConformance):
    injector = "template_add"       # rename with the component
    backbones = ("unet",)           # the built-in U-Net; add your own backbones here


def test_registered_by_this_plugin(bicycle_registry):
    from bicycle import plugins
    rows = {(kind, name): plugin for kind, name, plugin, _ in plugins.build_plugins(autoload=True).registry.listing()}
    assert rows[("injector", "template_add")] == "template"   # the entry point's name
