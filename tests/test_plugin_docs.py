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


def doc_problems(specs: dict[str, object], text: str) -> list[str]:
    """What the doc lacks: a section and the exact signature per hook; sections of hooks that do not exist."""
    problems = []
    for name, fn in specs.items():
        if f"### {name}\n" not in text:
            problems.append(f"hook {name} has no section '### {name}' in {DOC.name}")
        line = signature_line(fn)
        if line not in text:
            problems.append(f"hook {name} changed or is undocumented: {DOC.name} must show `{line}`")
    stale = set(re.findall(r"^### (bicycle_\w+)$", text, flags=re.M)) - set(specs)
    problems += [f"{DOC.name} documents a hook that does not exist: {name}" for name in sorted(stale)]
    return problems


def test_every_hook_is_documented_with_its_exact_signature():
    specs = _hookspecs()
    assert len(specs) >= 8, f"expected the 8+ hooks of bicycle.hookspecs, found {sorted(specs)}"
    problems = doc_problems(specs, DOC.read_text())
    assert not problems, "\n".join(problems)


def test_a_new_or_changed_hook_without_docs_is_caught():
    @hookspecs.hookspec
    def bicycle_train_validate(step: int, scores: dict[str, float]) -> None:
        """A hook that is not documented."""

    @hookspecs.hookspec
    def bicycle_train_step(step: int, metrics: dict[str, float]) -> None:
        """bicycle_train_step with a changed signature."""

    specs = {**_hookspecs(), "bicycle_train_validate": bicycle_train_validate, "bicycle_train_step": bicycle_train_step}
    problems = "\n".join(doc_problems(specs, DOC.read_text()))
    assert "bicycle_train_validate has no section" in problems
    assert "bicycle_train_step changed or is undocumented" in problems


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
