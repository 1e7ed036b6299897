"""docs/plugins.md documents every hook with its exact signature, the switches, and the kit's checks."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

from bicycle import hookspecs, plugins

DOC = Path(__file__).resolve().parents[1] / "docs" / "plugins.md"


def _hookspecs() -> dict[str, object]:
    marker = f"{hookspecs.PROJECT}_spec"
    return {name: fn for name, fn in vars(hookspecs).items() if callable(fn) and hasattr(fn, marker)}


def signature_line(fn) -> str:
    """``def name(arg: Ann, ...) -> Ret`` with the annotations as written in bicycle/hookspecs.py."""
    sig = inspect.signature(fn)
    params = ", ".join(f"{p.name}: {p.annotation}" if p.annotation is not p.empty else p.name
                       for p in sig.parameters.values())
    return f"def {fn.__name__}({params}) -> {sig.return_annotation}"


def test_every_hook_is_documented_with_its_exact_signature():
    text = DOC.read_text()
    specs = _hookspecs()
    assert specs, "no hookspecs found"
    for name, fn in specs.items():
        assert f"### {name}\n" in text, f"hook {name} has no section '### {name}' in {DOC.name}"
        line = signature_line(fn)
        assert line in text, f"hook {name} changed or is undocumented: {DOC.name} must show `{line}`"
    documented = set(re.findall(r"^### (bicycle_\w+)$", text, flags=re.M))
    stale = documented - set(specs)
    assert not stale, f"{DOC.name} documents hooks that do not exist: {sorted(stale)}"


def test_switches_and_contract_are_documented():
    text = DOC.read_text()
    for needle in (plugins.AUTOLOAD_ENV, plugins.BLOCK_ENV, f"[project.entry-points.{plugins.ENTRY_POINT_GROUP}]",
                   "registered twice", "failed to import", "channels_after", "InjectionPoint"):
        assert needle in text, f"{DOC.name} does not mention {needle!r}"


def test_every_kit_check_is_documented():
    import bicycle.testing as kit
    from bicycle.testing.generator import GENERATOR_CHECKS

    text = DOC.read_text()
    names = [n for n in kit.__all__ if n.startswith("check_")] + list(GENERATOR_CHECKS)
    names += ["injection_contract", "size_declarations", "injector_standalone", "protocol",
              "pairs_dtype_and_range", "pair_alignment", "oracle"]
    missing = [n for n in names if not re.search(rf"`{n}[`(]", text)]
    assert not missing, f"{DOC.name} does not document kit checks {missing}"


def test_signature_line_renders_a_hook():
    assert signature_line(hookspecs.bicycle_train_start) == \
        "def bicycle_train_start(config: RunConfig, run_dir: Path, start_step: int) -> None"
