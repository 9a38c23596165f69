#!/usr/bin/env python3
"""Checks the layering rule of docs/architecture.md on the source tree (run by `make test`).

1. Imports run only downwards: foundation -> adapters -> capabilities -> edge ->
   composition. A module may use its own layer's lower-ranked modules and anything below.
2. No source file over 600 lines (unit tests live in their own `tests.rs`), no function
   over 120 lines.
3. Production code never uses the dev-only modules (test helpers, the fake provider).

Known debts are listed below with the issue that removes them. The check fails on any
new violation, and also on a listed debt that no longer exists, so the lists only shrink.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The library's crates, one folder each under shared/ (shared/src is the composition).
CRATES = {
    "chatkb-core": ("shared/core", 0),
    "chatkb-adapters": ("shared/adapters", 1),
    "chatkb-resilience": ("shared/resilience", 2),
    "chatkb-kb": ("shared/kb", 3),
    "chatkb-chat": ("shared/chat", 4),
    "chatkb-health": ("shared/health", 4),
    "chatkb-backup": ("shared/backup", 4),
    "chatkb-local-embedder": ("shared/local-embedder", 4),
    "chatkb-edge": ("shared/edge", 5),
    "shared": ("shared", 6),
}
DEV_CRATES = {"chatkb-testing", "fake-openai"}
SOURCES = [ROOT / folder / "src" for folder, _ in CRATES.values()]
FUNCTION_SOURCES = sorted((ROOT / "functions").glob("*/src"))

# Module (first path segment under shared/src) -> (layer, rank). A lower rank may never
# import a higher one; capabilities are ranked among themselves (chat builds on kb,
# kb on the cache and resilience).
LAYERS = {
    "secret": ("foundation", 0),
    "canonical": ("foundation", 0),
    "shard": ("foundation", 0),
    "observability": ("foundation", 0),
    "store": ("adapters", 1),
    "openai": ("adapters", 1),
    "resilience": ("capabilities", 2),
    "cache": ("capabilities", 2),
    "kb": ("capabilities", 3),
    "chat": ("capabilities", 4),
    "health": ("capabilities", 4),
    "history": ("capabilities", 4),
    "backup": ("capabilities", 4),
    "local_embedder": ("capabilities", 4),
    "error": ("edge", 5),
    "auth": ("edge", 5),
    "http": ("edge", 5),
    "runtime": ("edge", 5),
    "server": ("edge", 5),
    "app": ("composition", 6),
    "services": ("composition", 6),
    "probes": ("composition", 6),
    "config": ("composition", 6),
    "lib": ("composition", 6),
}
DEV_ONLY = {"testing", "fake_openai"}
# Items lib.rs re-exports at the crate root, by the module that defines them.
ROOT_ITEMS = {"AppContext": "app", "StartError": "app", "ApiError": "error"}

# (file, imported module): upward imports that remain (none left; an entry here is a debt).
KNOWN_UPWARD: set[tuple[str, str]] = set()
MAX_FILE_LINES = 600
MAX_FN_LINES = 120
# file -> lines today; may shrink, never grow (issue 18 splits them).
KNOWN_BIG_FILES: dict[str, int] = {}
# (file, function) -> lines today.
KNOWN_LONG_FNS: dict[tuple[str, str], int] = {}

CRATE_PATH = re.compile(r"\bcrate::(\{[^}]*\}|\w+)")
FN_START = re.compile(r"^(\s*)(?:pub(?:\([a-z]+\))?\s+)?(?:async\s+)?(?:unsafe\s+)?fn\s+(\w+)")


def production_lines(path: Path) -> list[str]:
    """The file's lines up to its unit tests, comments blanked."""
    lines = []
    for line in path.read_text().splitlines():
        if line.strip() == "#[cfg(test)]":
            break
        code = line.split("//", 1)[0]
        lines.append(code)
    return lines


def module_of(relative: str) -> str:
    first = relative.split("/", 1)[0]
    return first[:-3] if first.endswith(".rs") else first


def imported_modules(lines: list[str]) -> set[str]:
    found = set()
    for line in lines:
        for match in CRATE_PATH.finditer(line):
            target = match.group(1)
            names = re.findall(r"\w+", target) if target.startswith("{") else [target]
            for name in names:
                if name in ROOT_ITEMS:
                    found.add(ROOT_ITEMS[name])
                elif name in LAYERS or name in DEV_ONLY:
                    found.add(name)
    # A multi-line `use crate::{\n a, b };` group.
    text = "\n".join(lines)
    for group in re.finditer(r"\bcrate::\{([^}]*)\}", text, re.S):
        for name in re.findall(r"(?:^|[,{\s])(\w+)", group.group(1)):
            if name in LAYERS or name in DEV_ONLY:
                found.add(name)
            elif name in ROOT_ITEMS:
                found.add(ROOT_ITEMS[name])
    return found


def crate_dependency_problems() -> list[str]:
    """A library crate depends (outside its dev-dependencies) only on crates below it."""
    problems = []
    for name, (folder, rank) in CRATES.items():
        manifest = (ROOT / folder / "Cargo.toml").read_text()
        section = re.search(r"^\[dependencies\]\n(.*?)(?=^\[|\Z)", manifest, re.S | re.M)
        for line in (section.group(1) if section else "").splitlines():
            dependency = line.split("=", 1)[0].strip().split(".", 1)[0]
            if dependency in DEV_CRATES:
                problems.append(f"{folder}/Cargo.toml: production crate {name} depends on dev-only {dependency}")
            elif dependency in CRATES and CRATES[dependency][1] >= rank and dependency != name:
                problems.append(f"{folder}/Cargo.toml: {name} depends on {dependency}, which is not below it")
    return problems


def record_sizes(path, relative, lines, seen_big, seen_long) -> None:
    """A whole file's length (its unit tests live in `tests.rs`) and its long functions."""
    total = len(path.read_text().splitlines())
    if total > MAX_FILE_LINES and path.name != "tests.rs":
        seen_big[relative] = total
    for name, length in long_functions(lines):
        seen_long[(relative, name)] = length


def ratchet(what: str, seen: dict, known: dict, limit: int) -> list[str]:
    """New excesses fail; known ones may only shrink, and a known one that is gone must go."""
    problems = []
    for key, size in sorted(seen.items()):
        allowed = known.get(key)
        if allowed is None:
            problems.append(f"{key}: {size} {what} (at most {limit})")
        elif size > allowed:
            problems.append(f"{key}: grew to {size} {what} (known at {allowed})")
    for key in sorted(set(known) - set(seen)):
        problems.append(f"{key} is within {limit} {what} now: remove it from the known debts")
    return problems


def long_functions(lines: list[str]) -> list[tuple[str, int]]:
    found = []
    for start, line in enumerate(lines):
        match = FN_START.match(line)
        if not match or line.rstrip().endswith(";"):
            continue
        indent = match.group(1)
        for end in range(start + 1, len(lines)):
            if lines[end].startswith(indent + "}") and not lines[end].startswith(indent + "} "):
                length = end - start + 1
                if length > MAX_FN_LINES:
                    found.append((match.group(2), length))
                break
    return found


def main() -> int:
    problems: list[str] = crate_dependency_problems()
    seen_upward: set[tuple[str, str]] = set()
    seen_big: dict[str, int] = {}
    seen_long: dict[tuple[str, str], int] = {}
    for source in SOURCES:
        for path in sorted(source.rglob("*.rs")):
            relative = path.relative_to(source).as_posix()
            module = module_of(relative)
            if module in DEV_ONLY:
                continue
            if relative == "lib.rs":
                # A crate root only declares modules and names the crates below it.
                continue
            if module not in LAYERS:
                problems.append(f"{relative}: module `{module}` has no layer in this script")
                continue
            layer, rank = LAYERS[module]
            lines = production_lines(path)
            for target in sorted(imported_modules(lines)):
                if target == module:
                    continue
                if target in DEV_ONLY:
                    problems.append(f"{relative}: production code uses dev-only `{target}`")
                    continue
                target_layer, target_rank = LAYERS[target]
                if target_rank > rank:
                    if (relative, target) in KNOWN_UPWARD:
                        seen_upward.add((relative, target))
                    else:
                        problems.append(
                            f"{relative} ({layer}) imports `{target}` ({target_layer}), a layer above it"
                        )
            record_sizes(path, relative, lines, seen_big, seen_long)
    for function_src in FUNCTION_SOURCES:
        for path in sorted(function_src.rglob("*.rs")):
            lines = production_lines(path)
            relative = path.relative_to(ROOT).as_posix()
            record_sizes(path, relative, lines, seen_big, seen_long)
            for line in lines:
                if re.search(r"\b(shared::testing|shared::fake_openai|chatkb_testing|fake_openai)::", line):
                    problems.append(f"{relative}: a function uses dev-only shared code")

    for debt in sorted(KNOWN_UPWARD - seen_upward):
        problems.append(f"{debt[0]} no longer imports `{debt[1]}`: remove it from KNOWN_UPWARD")
    problems += ratchet("lines", seen_big, KNOWN_BIG_FILES, MAX_FILE_LINES)
    problems += ratchet("lines in a function", seen_long, KNOWN_LONG_FNS, MAX_FN_LINES)

    debts = len(seen_upward) + len(seen_big) + len(seen_long)
    if problems:
        print("architecture check failed:")
        for problem in problems:
            print(f"  {problem}")
        return 1
    print(
        f"architecture check passed: imports run downwards ({len(seen_upward)} known upward imports, "
        f"{len(seen_big)} known big files, {len(seen_long)} known long functions left; {debts} debts)"
    )
    return 0


def self_test() -> None:
    """The checks themselves: an upward import, a long function and a dev-only use are seen."""
    lines = [
        "use crate::chat::ChatError;",
        "use crate::{cache::TieredCache,",
        "    kb::KnowledgeBase};",
        "let x = crate::AppContext::new();",
        "// use crate::config::Settings;",
    ]
    assert imported_modules(production_lines_of(lines)) == {"chat", "cache", "kb", "app"}
    long = ["pub async fn big() {"] + ["    step();"] * MAX_FN_LINES + ["}"]
    assert long_functions(long) == [("big", MAX_FN_LINES + 2)], long_functions(long)
    short = ["fn small() {", "    step();", "}"]
    assert long_functions(short) == []
    assert LAYERS["resilience"][1] < LAYERS["chat"][1] < LAYERS["error"][1] < LAYERS["app"][1]


def production_lines_of(lines: list[str]) -> list[str]:
    return [line.split("//", 1)[0] for line in lines]


if __name__ == "__main__":
    self_test()
    sys.exit(main())
