"""The user docs hold together: every relative link and #anchor in the README, docs/*.md and the experiments'
READMEs resolves, and neither the docs nor the code read like a lab notebook."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# A lab notebook's words: which session or which look at a task showed what. That history belongs in
# CHANGELOG.md and the experiments' READMEs.
NOTEBOOK = re.compile(r"(previous|this|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth)[ _]session"
                      r"|(first|second|third|fourth|fifth) look", re.I)
NOTEBOOK_PATHS = ("bicycle", "kernels", "README.md", "docs")

LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^()\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def user_docs() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted(ROOT.glob("experiments/*/README.md"))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation removed except hyphens, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())  # a link in a heading keeps its text
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading's anchor in a Markdown file, with GitHub's -1, -2 ... suffixes for repeated headings."""
    seen: dict[str, int] = {}
    found = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        match = re.match(r"^#{1,6}\s+(.+?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def links(path: Path) -> list[str]:
    """The link targets of a Markdown file, outside code blocks and inline code."""
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    return LINK.findall(text)


def shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def broken_links(path: Path) -> list[str]:
    problems = []
    for target in links(path):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ... : not checked here
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{shown(path)}: ({target})"
        if not dest.exists():
            problems.append(f"{where}: {file_part} does not exist")
            continue
        if anchor:
            if dest.is_dir() or dest.suffix.lower() != ".md":
                problems.append(f"{where}: an anchor into a file that is not Markdown")
            elif anchor not in anchors(dest):
                problems.append(f"{where}: no heading in {shown(dest)} has the anchor #{anchor}")
    return problems


# A repository path named in the docs' text ("`bicycle/train/loop.py`", "experiments/quality/README.md"): it must exist;
# a glob (*) must match at least one file, and each of a brace list's names ({a,b}) exist. Outputs that bicycle writes when run are named, not shipped.
REPO_PATH = re.compile(r"(?<![\w./$-])((?:bicycle|kernels|experiments|benchmarks|tools|tests|docs|examples)/[\w./*{},-]*[\w/*}])")
WRITTEN_WHEN_RUN = {"benchmarks/REVISION.json": "gpu_prepare.sh writes it",
                    "benchmarks/results/gpu_check_*.json": "the GPU check writes it on a GPU machine"}


def expand(pattern: str) -> list[str]:
    """``a{1,2}b`` -> [a1b, a2b] (one level of braces, as the shell)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    return [x for part in match.group(1).split(",") for x in expand(pattern[:match.start()] + part +
                                                                     pattern[match.end():])]


def missing_paths(path: Path) -> list[str]:
    problems = []
    for found in REPO_PATH.findall(path.read_text()):
        name = found.rstrip(".,")
        if name in WRITTEN_WHEN_RUN:
            continue
        if not all(any(ROOT.glob(p)) if "*" in p else (ROOT / p).exists() for p in expand(name)):
            problems.append(f"{shown(path)}: {name} is not in the repository")
    return problems


def notebook_lines() -> list[str]:
    hits = []
    for name in NOTEBOOK_PATHS:
        base = ROOT / name
        files = [base] if base.is_file() else sorted(p for p in base.rglob("*") if p.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix in (".pyc", ".so", ".png"):
                continue
            try:
                text = f.read_text()
            except (UnicodeDecodeError, OSError):
                continue
            for i, line in enumerate(text.splitlines(), 1):
                if NOTEBOOK.search(line):
                    hits.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    return hits


@pytest.mark.parametrize("path", user_docs(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_anchor_and_repository_path_resolves(path):
    problems = broken_links(path) + missing_paths(path)
    assert not problems, "\n".join(problems)


def test_the_docs_have_links_to_check():
    assert len(user_docs()) >= 10
    assert sum(len(links(p)) for p in user_docs()) >= 30


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## A section (`--flag`)\n")
    probe = tmp_path / "probe.md"
    probe.write_text("# A title\n\n[a](other.md#no-such-heading) [b](no_such_file.md) [c](#a-title) "
                     "[d](other.md#a-section---flag) `[e](inline.md)`\n\n```\n[f](fenced.md)\n```\n")
    problems = "\n".join(broken_links(probe))
    assert "#no-such-heading" in problems and "no_such_file.md does not exist" in problems
    for fine in ("#a-title", "#a-section---flag", "inline.md", "fenced.md"):
        assert fine not in problems, problems


def test_slugs_follow_github():
    assert slug("Which weights (`--weights`)") == "which-weights---weights"
    assert slug("The paper's ablation") == "the-papers-ablation"
    assert slug("Defaults on unseen data (`experiments/generalization/generalization.py`)") == \
        "defaults-on-unseen-data-experimentsgeneralizationgeneralizationpy"


def test_the_path_check_catches_a_moved_file(tmp_path):
    probe = tmp_path / "probe.md"
    probe.write_text("See `bicycle/train/loop.py`, bicycle/no_such_module.py, experiments/*/README.md and "
                     "benchmarks/results/kernels_cpu_20261126_2threads_run{1,2}.json but not "
                     "benchmarks/results/kernels_cpu_20261126_2threads_run{1,9}.json.\n")
    problems = "\n".join(missing_paths(probe))
    assert "bicycle/no_such_module.py" in problems and "loop.py" not in problems
    assert "README.md" not in problems and "run{1,2}" not in problems and "run{1,9}" in problems


def test_no_lab_notebook_in_the_code_or_the_user_docs():
    hits = notebook_lines()
    assert not hits, "history belongs in CHANGELOG.md or experiments/*/README.md:\n" + "\n".join(hits)


# ---------------------------------------------------------------------------------------------------------------
# Every code block of the README and docs/*.md is exercised: bash blocks' ``bicycle train`` lines run with
# ``--dry-run``, other bicycle lines have their flags checked against the command's options, python blocks run
# against a tiny trained run, hook signatures are compared with bicycle.hookspecs.

import shutil  # noqa: E402
import sys  # noqa: E402

from click.testing import CliRunner  # noqa: E402

from doc_blocks import ROOT as _ROOT, Block, bicycle_part, blocks, flags_used, hook_signature, shell_commands, words  # noqa: E402

LANGS = {"bash", "python", "toml", "text"}  # text: a folder layout or a listing, nothing to run
TINY_RUN = ["--steps", "6", "--image-size", "32", "--batch-size", "4", "--ngf", "8", "--nef", "8", "--ndf", "8",
            "--device", "cpu", "--impl", "ref", "--checkpoint-every", "6", "--sample-every", "6", "--log-every", "6"]
# Commands in the docs that are not bicycle's own, with why they are not run here.
EXTERNAL = {
    "pip": "installing: the README's two commands are checked by tests/test_readme.py and run by .ci/run",
    "pytest": "the test suite itself: the README's second command, run by .ci/run",
    "tensorboard": "TensorBoard's own CLI; the plugin's event files are read back in tests/test_example_plugins.py",
}
# Python blocks that are not run, with the reason (matched by a line of the block).
NOT_RUN = {
    ("docs/demo.md", 'client = Client("http://127.0.0.1:7860/")'):
        "needs a live `bicycle demo` server; tests/test_demo.py calls the same four endpoints on one",
    ("docs/plugins.md", 'check_backbone(reg.backbone("resnet6")).raise_for_failures()'):
        "the full conformance checks of resnet6 and adain take about a minute on 2 cores, half this file's budget; "
        "tests/test_example_plugins.py runs the same checks on the installed examples",
}
# Names a block uses without defining them (its prose says what they are), given before it runs.
GIVEN = {
    "model.translate(img,": "import bicycle\nmodel = bicycle.load('runs/shoes', device='cpu')\nimg = 'edges.png'\n",
    'g.run(["B"]': "import numpy as np, onnxruntime\n_, c, s, _ = onnxruntime.InferenceSession('model.onnx').get_inputs()[0].shape\n"
                   "a = np.zeros((2, c, s, s), np.float32)\n",
}
EXAMPLE_PLUGINS = {"resnet_generator": "bicycle_resnet_generator.plugin", "adain_injector": "bicycle_adain.plugin"}


def _cli():
    from bicycle.cli import main
    return main


@pytest.fixture
def example_plugins(monkeypatch):
    """The example plugins of plugins/ registered in-process (as `pip install -e plugins/...` would)."""
    import importlib

    from bicycle import plugins
    for folder in EXAMPLE_PLUGINS:
        monkeypatch.syspath_prepend(str(_ROOT / "plugins" / folder / "src"))
    extra = [importlib.import_module(m) for m in EXAMPLE_PLUGINS.values()]
    real = plugins.build_plugins
    monkeypatch.setattr(plugins, "build_plugins", lambda more=(), **kw: real([*extra, *more], **kw))
    plugins.set_plugins(None)
    yield
    plugins.set_plugins(None)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 6-step 32-px run (with its posterior) and its model exported to ONNX, for the python blocks."""
    root = tmp_path_factory.mktemp("docs_run")
    done = CliRunner().invoke(_cli(), ["train", *TINY_RUN, "--run-dir", str(root / "shoes")])
    assert done.exit_code == 0, done.output + repr(done.exception)
    onnx = CliRunner().invoke(_cli(), ["export", str(root / "shoes"), "--onnx", str(root / "model.onnx")])
    assert onnx.exit_code == 0, onnx.output + repr(onnx.exception)
    return root


def _pictures(folder: Path) -> None:
    from data_helpers import pattern, save, side_by_side
    for name in ("edges.png", "shoe.png", "input.png", "reference.png"):
        save(pattern(32, 32, 3, seed=len(name)), folder / name)
    a = pattern(32, 32, 3, seed=7)
    save(side_by_side(a, 255 - a), folder / "pair.png")


def _command(name: str):
    cmd = _cli().commands.get(name)
    assert cmd is not None, f"bicycle {name}: no such command"
    return cmd


def _unknown_flags(args: list[str]) -> list[str]:
    cmd = _command(args[0])
    known = {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}
    return [f for f in flags_used(args[1:]) if f not in known]


def _dry_run(args: list[str], folder: Path) -> None:
    """``bicycle train ARGS --dry-run`` in-process; a --data folder placeholder becomes a tiny pix2pix folder."""
    from bicycle.plugins import get_plugins
    from data_helpers import make_aligned_dataset
    args = list(args)
    if "--nproc" in args:  # starts N torchrun ranks; the rest of the line is dry-run in this process
        i = args.index("--nproc")
        del args[i:i + 2]
    if "--data" in args:
        data = args[args.index("--data") + 1]
        if data.split(":")[0] not in get_plugins().registry.names("dataset"):
            make_aligned_dataset(folder / data, size=16)
    done = CliRunner().invoke(_cli(), [*args, "--dry-run"])
    assert done.exit_code == 0, f"bicycle {' '.join(args)} --dry-run:\n{done.output}{done.exception!r}"
    assert '"steps"' in done.output


def _check_shell(command: str, folder: Path) -> None:
    w = words(command)
    env = [x.split("=")[0] for x in w if re.match(r"^[A-Z_]+=", x)]
    w = w[len(env):]
    args = bicycle_part(command)
    if args is not None:
        assert not _unknown_flags(args), f"{command}: bicycle {args[0]} has no {_unknown_flags(args)}"
        if args[0] == "train" and w[0] == "bicycle":
            _dry_run(args, folder)
    elif w[0] == "bash":
        script = _ROOT / w[1]
        assert script.is_file(), f"{command}: {w[1]} does not exist"
        text = script.read_text()
        assert all(name in text for name in env), f"{command}: {script.name} reads none of {env}"
    else:
        assert w[0] in EXTERNAL, f"{command}: not a bicycle command; list it in EXTERNAL with a reason"


@pytest.mark.parametrize("block", blocks(), ids=lambda b: b.id)
def test_every_code_block_says_its_language(block: Block):
    assert block.lang in LANGS, f"{block.id}: a fence with language {block.lang!r}; use one of {sorted(LANGS)}"


@pytest.mark.parametrize("block", blocks("bash"), ids=lambda b: b.id)
def test_bash_blocks_run_or_parse(block: Block, tmp_path, monkeypatch, example_plugins):
    monkeypatch.chdir(tmp_path)
    commands = shell_commands(block.code)
    assert commands, f"{block.id}: an empty bash block"
    for command in commands:
        _check_shell(command, tmp_path)


@pytest.mark.parametrize("block", blocks("python"), ids=lambda b: b.id)
def test_python_blocks_run(block: Block, tmp_path, monkeypatch, example_plugins, request):
    reason = next((why for (path, line), why in NOT_RUN.items() if path == block.path and line in block.code), None)
    if reason:
        pytest.skip(f"{block.id}: {reason}")
    signature = hook_signature(block.code)
    if signature:  # a hook's signature as docs/plugins.md shows it
        import inspect

        from bicycle import hookspecs
        name, params = signature
        assert hasattr(hookspecs, name), f"{block.id}: no hook {name} in bicycle.hookspecs"
        assert params == list(inspect.signature(getattr(hookspecs, name)).parameters), block.id
        return
    run = request.getfixturevalue("tiny_run")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "shoes").symlink_to(run / "shoes", target_is_directory=True)
    shutil.copy(run / "model.onnx", tmp_path / "model.onnx")
    _pictures(tmp_path)
    monkeypatch.chdir(tmp_path)
    given = "".join(code for key, code in GIVEN.items() if key in block.code)
    namespace = {"__name__": f"docs_block_{block.line}"}
    exec(compile(given + block.code, block.id, "exec"), namespace)  # noqa: S102


def test_every_not_run_entry_names_a_block():
    for (path, line) in NOT_RUN:
        assert any(b.path == path and line in b.code for b in blocks("python")), f"stale NOT_RUN entry {path}: {line}"


@pytest.mark.parametrize("block", blocks("toml"), ids=lambda b: b.id)
def test_toml_blocks_parse_and_name_bicycles_entry_point_group(block: Block):
    import tomllib

    from bicycle.plugins import ENTRY_POINT_GROUP
    parsed = tomllib.loads(block.code)
    assert ENTRY_POINT_GROUP in parsed["project"]["entry-points"], block.id


def test_the_block_checks_catch_a_wrong_flag_and_an_unknown_command(tmp_path):
    with pytest.raises(AssertionError, match="--no-such-flag"):
        _check_shell("bicycle sample --checkpoint RUN --no-such-flag 3", tmp_path)
    with pytest.raises(AssertionError, match="not a bicycle command"):
        _check_shell("rm -rf runs", tmp_path)
    assert shell_commands("a \\\n  b  # note\npip x && bicycle env\n") == ["a b", "pip x", "bicycle env"]
    assert hook_signature("def f(a: int, b: dict[str, float]) -> None") == ("f", ["a", "b"])
