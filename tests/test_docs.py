"""README and docs/ stay true: every `flax-distil` command in a bash block parses, links resolve.

Fast: only the argument parser runs (no model, no data). A command is a line of a ```bash block
(backslash continuations joined, trailing comments dropped) or a part of one between `&&`, `;`
and `|`, whose first word is `flax-distil` or `.venv/bin/flax-distil`.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from flax_distil.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
MAX_README_BYTES = 10_240
PROGRAMS = ("flax-distil", ".venv/bin/flax-distil")
SEPARATORS = {"&&", "||", ";", "|", "&"}

FENCE = re.compile(r"^```(\S*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def bash_blocks(text: str) -> list[str]:
    return [body for language, body in FENCE.findall(text) if language in ("bash", "sh", "shell")]


def logical_lines(block: str) -> list[str]:
    """The block's lines with backslash continuations joined."""
    lines, current = [], ""
    for line in block.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
        else:
            lines.append(current + line)
            current = ""
    if current:
        lines.append(current)
    return lines


def split_commands(line: str) -> list[list[str]]:
    """shlex words of each simple command on the line, comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True  # words as the shell splits them; comments (#) are dropped
    commands, words = [], []
    for token in lexer:
        if token in SEPARATORS:
            commands.append(words)
            words = []
        else:
            words.append(token)
    commands.append(words)
    return [words for words in commands if words]


def commands_in(text: str) -> list[list[str]]:
    """Every flax-distil command in the text's bash blocks, as argv (without the program)."""
    found = []
    for block in bash_blocks(text):
        for line in logical_lines(block):
            for words in split_commands(line):
                if words[0] in PROGRAMS:
                    found.append(words[1:])
    return found


def collected() -> list[tuple[str, list[str]]]:
    return [
        (f"{path.relative_to(REPO)}: flax-distil {shlex.join(argv)}", argv)
        for path in markdown_files()
        for argv in commands_in(path.read_text())
    ]


COMMANDS = collected()


def subcommand_flags(parser: argparse.ArgumentParser, command: str) -> set[str]:
    """The option strings of one subcommand, spelled out in full."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:
            return set(action.choices[command]._option_string_actions)
    return set()


def check_parses(label: str, argv: list[str]) -> None:
    """argparse accepts argv, and every flag is written in full (not an abbreviation)."""
    parser = build_parser()
    try:
        parser.parse_args(argv)
    except SystemExit as error:
        pytest.fail(f"argparse rejects ({error.code}): {label}")
    known = subcommand_flags(parser, argv[0])
    flags = [word.split("=", 1)[0] for word in argv[1:] if word.startswith("--")]
    unknown = [flag for flag in flags if flag not in known]
    if unknown:
        pytest.fail(f"abbreviated or unknown flags {unknown}: {label}")


@pytest.mark.parametrize(("label", "argv"), COMMANDS, ids=[label for label, _ in COMMANDS])
def test_documented_command_parses(label, argv):
    check_parses(label, argv)


def test_commands_are_collected():
    """Guards against a collector that silently finds nothing."""
    subcommands = {argv[0] for _, argv in COMMANDS if argv}
    assert len(COMMANDS) >= 30, COMMANDS
    assert {"transcribe", "pseudo-label", "train", "create-student", "compare", "demo"} <= (
        subcommands
    )


def test_collector_and_check_can_fail():
    text = (
        "```bash\n"
        "flax-distil transcribe --model pypi:tiny.en \\\n"
        "    --timestamps a.flac  # a comment\n"
        "bash setup.sh && .venv/bin/flax-distil demo; echo done\n"
        "python -m flax_distil transcribe --not-a-flag x\n"
        "```\n"
        "```text\nflax-distil transcribe SOURCE [--bogus]\n```\n"
    )
    assert commands_in(text) == [
        ["transcribe", "--model", "pypi:tiny.en", "--timestamps", "a.flac"],
        ["demo"],
    ]
    with pytest.raises(pytest.fail.Exception, match="argparse rejects"):
        check_parses("flax-distil transcribe --bogus-flag", ["transcribe", "--bogus-flag", "a"])
    with pytest.raises(pytest.fail.Exception, match="abbreviated"):  # argparse accepts --mod
        check_parses("flax-distil transcribe --mod", ["transcribe", "--mod", "pypi:tiny.en", "a"])
    check_parses("flax-distil transcribe", ["transcribe", "--model=pypi:tiny.en", "a.flac"])


def test_readme_is_a_front_door():
    size = len(README.read_bytes())
    assert size <= MAX_README_BYTES, f"README.md is {size} bytes (at most {MAX_README_BYTES})"


def relative_links(path: Path) -> list[str]:
    text = FENCE.sub("", path.read_text())  # code blocks hold no links
    links = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith("#"):
            continue  # http:, https:, mailto: or an anchor in the same file
        links.append(target.split("#", 1)[0])
    return links


def test_readme_links_every_docs_file():
    linked = {(REPO / target).resolve() for target in relative_links(README)}
    docs = set(DOCS.glob("*.md"))
    assert docs, "docs/ has no markdown files"
    assert {path.resolve() for path in docs} <= linked, "docs/ files the README does not link"
    missing = sorted(str(p) for p in linked if p.parent == DOCS.resolve() and not p.is_file())
    assert not missing, f"README links missing docs/ files: {missing}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_resolve(path):
    broken = [t for t in relative_links(path) if not (path.parent / t).exists()]
    assert not broken, f"{path.relative_to(REPO)} links to missing files: {broken}"
