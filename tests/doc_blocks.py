"""The fenced code blocks of the README and docs/*.md, and the shell commands in them, for tests/test_docs.py."""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BLOCK = re.compile(r"^```([\w-]*)[^\n]*\n(.*?)^```[ \t]*$", re.S | re.M)
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][\w-]*")


@dataclass(frozen=True)
class Block:
    path: str  # relative to the repository root
    line: int  # the fence's line
    lang: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def blocks(lang: str | None = None) -> list[Block]:
    found = []
    for path in doc_files():
        text = path.read_text()
        for m in BLOCK.finditer(text):
            b = Block(str(path.relative_to(ROOT)), text.count("\n", 0, m.start()) + 1, m.group(1), m.group(2))
            if lang is None or b.lang == lang:
                found.append(b)
    return found


def shell_commands(code: str) -> list[str]:
    """The commands of a bash block: continuations joined, comments dropped, ``a && b`` split."""
    joined = re.sub(r"\\\n\s*", " ", code)
    commands = []
    for line in joined.splitlines():
        line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
        commands += [part.strip() for part in line.split("&&") if part.strip()]
    return commands


def words(command: str) -> list[str]:
    return shlex.split(command)


def bicycle_part(command: str) -> list[str] | None:
    """``bicycle CMD ...`` (also after ``torchrun ... -m``, and after ``VAR=value`` assignments) as its words from
    the command name on; None when the command is not a bicycle command."""
    w = words(command)
    while w and re.match(r"^[A-Z_]+=", w[0]):
        w = w[1:]
    if w and w[0] == "torchrun":
        if "-m" not in w or w[w.index("-m") + 1] != "bicycle":
            return None
        return w[w.index("-m") + 2:]
    if w and w[0] == "bicycle":
        return w[1:]
    return None


def flags_used(args: list[str]) -> list[str]:
    """Every ``--flag`` a command line uses, also inside ``[--flag VALUE]`` usage brackets."""
    return [f for a in args for f in FLAG.findall(a)]


def hook_signature(code: str) -> tuple[str, list[str]] | None:
    """``def name(a: T, b: U) -> R`` (a hook's signature as the docs show it): (name, [a, b])."""
    m = re.fullmatch(r"\s*def (\w+)\((.*)\)\s*->\s*[^:]+\s*", code.strip(), re.S)
    if not m:
        return None
    params = [p.split(":")[0].strip() for p in re.split(r",\s*(?![^\[]*\])", m.group(2)) if p.strip()]
    return m.group(1), params
