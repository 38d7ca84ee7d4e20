"""The Containerfile read into stages and instructions, and .dockerignore's build context."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass

from tests.deploy.tools import ROOT

CONTAINERFILE = ROOT / "Containerfile"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int

    def words(self) -> list[str]:
        return shlex.split(self.args)

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list), f"line {self.line}: {self.keyword} is not in exec form"
        return [str(part) for part in value]


@dataclass(frozen=True)
class Stage:
    name: str
    base: str
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [ins for ins in self.instructions if ins.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"stage {self.name} has no {keyword}"
        return found[-1]


def parse_containerfile(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined and comment lines dropped."""
    lines = text.splitlines()
    result: list[Instruction] = []
    index = 0
    while index < len(lines):
        stripped = lines[index].strip()
        if not stripped or stripped.startswith("#"):
            index += 1
            continue
        start, parts = index, []
        while stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            index += 1
            while index < len(lines) and (
                not lines[index].strip() or lines[index].strip().startswith("#")
            ):
                index += 1
            stripped = lines[index].strip() if index < len(lines) else ""
        parts.append(stripped)
        index += 1
        keyword, _, args = " ".join(part for part in parts if part).partition(" ")
        result.append(Instruction(keyword.upper(), args.strip(), start + 1))
    return result


def global_args() -> dict[str, str]:
    found: dict[str, str] = {}
    for ins in parse_containerfile(CONTAINERFILE.read_text()):
        if ins.keyword == "FROM":
            break
        if ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            found[name] = default
    return found


def stages() -> dict[str, Stage]:
    found: dict[str, Stage] = {}
    current: Stage | None = None
    for ins in parse_containerfile(CONTAINERFILE.read_text()):
        if ins.keyword == "FROM":
            words = ins.words()
            assert len(words) == 3, f"line {ins.line}: name every stage (FROM image AS name)"
            assert words[1].upper() == "AS", f"line {ins.line}: FROM image AS name"
            current = Stage(words[2], words[0], [])
            found[current.name] = current
        elif current is not None:
            current.instructions.append(ins)
    return found


def runtime_stage() -> Stage:
    return list(stages().values())[-1]


def copy_sources(ins: Instruction) -> tuple[list[str], str]:
    words = [word for word in ins.words() if not word.startswith("--")]
    return words[:-1], words[-1]


def image_uid() -> int:
    user = runtime_stage().last("USER").args
    uid = user.partition(":")[0]
    assert uid.isdigit(), f"USER {user}: a numeric UID lets Kubernetes verify runAsNonRoot"
    return int(uid)


# --- .dockerignore, as Docker and podman read it -----------------------------------------------


def _glob_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    for token in re.split(r"(\*\*/|\*\*|\*|\?)", pattern):
        out += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
            token, re.escape(token)
        )
    return re.compile(out)


def ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def in_build_context(relative: str) -> bool:
    """Whether the build context holds this path: the last matching pattern decides, and a
    pattern matches a path or any of its parent folders."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    included = True
    for raw in ignore_patterns():
        negated = raw.startswith("!")
        regex = _glob_regex(raw.removeprefix("!").strip("/"))
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            included = negated
    return included
