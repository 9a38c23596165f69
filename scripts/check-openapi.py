#!/usr/bin/env python3
"""The OpenAPI contract against the routers (issue 17, item 4), run by `make test`.

Reads every axum route from the Rust source without building it: each
`.route("<path>", get(..).post(..)...)` call in functions/*/src/**/*.rs, shared/src/**/*.rs
and shared/edge/src/**/*.rs (comments and `#[cfg(test)]` modules left out), with its
methods, and compares them with the `paths` of docs/openapi.yaml, both ways:

- every route the code serves (path and method) is documented;
- every documented path and method is served by the code;
- each documented operation is tagged with the function that serves it (`probes` for the
  routes of shared/src/probes.rs, which every function serves), so a fuzzer can be run
  per function with `--include-tag <function> --include-tag probes`;
- the routes of a function built with `protected_app` need an API key in the spec
  (non-empty `security`), and the others (health, probes) say `security: []`.

It also validates the spec itself: with openapi-spec-validator (installed with pip when it
is missing, unless --no-install), and with structural checks of its own (every `$ref`
resolves, every path template parameter is declared, operationIds are unique, every
operation has responses). One line per check; exit 1 if any fails.

Axum's `{id}` is OpenAPI's `{id}` (the old `:id` and the catch-all `{*rest}` are read as
`{id}` and `{rest}`). `any(...)` and `route_service` serve every method: such a path needs
at least one documented method, and any documented method counts as served.

Usage: scripts/check-openapi.py [--spec docs/openapi.yaml] [--no-install]
       scripts/check-openapi.py --self-test   (the checks catch a missing and an extra route)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SPEC = ROOT / "docs" / "openapi.yaml"
# Where routers are built: (glob, how the file's routes are attributed).
SOURCE_GLOBS = ["functions/*/src/**/*.rs", "shared/src/**/*.rs", "shared/edge/src/**/*.rs"]
HTTP_METHODS = ["get", "put", "post", "delete", "options", "head", "patch", "trace"]
ANY = "*"


@dataclass(frozen=True)
class Route:
    path: str  # OpenAPI syntax
    methods: frozenset  # lower-case methods, or {ANY}
    origin: str  # file:line
    owner: str  # the function's name, or "probes" for the shared probes
    protected: bool  # behind `protected_app` (an API key)


# ---------------------------------------------------------------- reading Rust


def strip_comments(src: str) -> str:
    """Blanks out comments (keeping line breaks and string literals intact)."""
    out = []
    i, n = 0, len(src)
    while i < n:
        c = src[i]
        if src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("".join(ch if ch == "\n" else " " for ch in src[i:j]))
            i = j
            continue
        if c == '"' or (c == "r" and re.match(r'r#*"', src[i:]) and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_"))):
            j = string_end(src, i)
            out.append(src[i:j])
            i = j
            continue
        if c == "'":
            # A char literal ('x', '\n', '\'') or a lifetime ('a): copy the char literal whole.
            m = re.match(r"'(\\.|\\u\{[0-9a-fA-F]+\}|[^\\'])'", src[i:])
            if m:
                out.append(m.group(0))
                i += len(m.group(0))
                continue
        out.append(c)
        i += 1
    return "".join(out)


def string_end(src: str, i: int) -> int:
    """The index just past the string literal that starts at `i` ("..." or r#"..."#)."""
    if src[i] == "r":
        m = re.match(r'r(#*)"', src[i:])
        hashes = m.group(1)
        end = src.find('"' + hashes, i + len(m.group(0)))
        return len(src) if end < 0 else end + 1 + len(hashes)
    j = i + 1
    while j < len(src):
        if src[j] == "\\":
            j += 2
            continue
        if src[j] == '"':
            return j + 1
        j += 1
    return len(src)


def balanced(src: str, open_at: int) -> int:
    """The index of the `)` that closes the `(` at `open_at` (strings skipped)."""
    depth, j = 0, open_at
    while j < len(src):
        c = src[j]
        if c == '"' or (c == "r" and re.match(r'r#*"', src[j:]) and not (src[j - 1].isalnum() or src[j - 1] == "_")):
            j = string_end(src, j)
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    raise ValueError("unbalanced parentheses")


def strip_test_modules(src: str) -> str:
    """Removes `#[cfg(test)] mod name { ... }` blocks (their routers are test fixtures)."""
    pattern = re.compile(r"#\[cfg\(test\)\]\s*(?:#\[[^\]]*\]\s*)*(?:pub(?:\([^)]*\))?\s+)?mod\s+\w+\s*\{")
    while True:
        m = pattern.search(src)
        if not m:
            return src
        end = balanced(src, m.end() - 1)
        blank = "".join(ch if ch == "\n" else " " for ch in src[m.start() : end + 1])
        src = src[: m.start()] + blank + src[end + 1 :]


def axum_to_openapi(path: str) -> str:
    path = re.sub(r"\{\*(\w+)\}", r"{\1}", path)
    return re.sub(r"(?<=/):(\w+)", r"{\1}", path)


METHOD_CALL = re.compile(r"(?<![\w:])(?:\.\s*)?(get|put|post|delete|options|head|patch|trace|connect|any)\s*\(")
METHOD_FILTER = re.compile(r"MethodFilter::([A-Z]+)")
ROUTE_CALL = re.compile(r"\.\s*(route|route_service|nest|nest_service)\s*\(")


class SourceError(Exception):
    pass


def routes_in(src: str, origin: str, owner: str, protected: bool) -> tuple[list[Route], list[str]]:
    """The routes one Rust file declares, and what could not be read."""
    code = strip_test_modules(strip_comments(src))
    routes, problems = [], []
    for m in ROUTE_CALL.finditer(code):
        kind = m.group(1)
        open_at = m.end() - 1
        line = code.count("\n", 0, m.start()) + 1
        where = f"{origin}:{line}"
        try:
            close = balanced(code, open_at)
        except ValueError:
            problems.append(f"{where}: unbalanced `.{kind}(` call")
            continue
        args = code[open_at + 1 : close]
        lit = re.match(r'\s*"((?:[^"\\]|\\.)*)"\s*,', args, re.S)
        if not lit:
            # `self.route(provider, ...)` and the like: not a router's route.
            if kind == "route" and re.match(r'\s*(r#*)?"', args):
                problems.append(f"{where}: `.route(` whose path is not a plain string literal")
            continue
        path = lit.group(1)
        if kind in ("nest", "nest_service"):
            problems.append(
                f"{where}: `.{kind}(\"{path}\", ...)` prefixes another router's routes; "
                "scripts/check-openapi.py cannot follow it yet"
            )
            continue
        rest = args[lit.end() :]
        if kind == "route_service":
            methods = {ANY}
        else:
            methods = {x.lower() for x in METHOD_CALL.findall(rest)}
            methods |= {x.lower() for x in METHOD_FILTER.findall(rest)}
            if "any" in methods:
                methods = {ANY}
        methods.discard("connect")
        if not methods:
            problems.append(f"{where}: no method found for route {path}")
            continue
        routes.append(Route(axum_to_openapi(path), frozenset(methods), where, owner, protected))
    return routes, problems


def code_routes(root: Path) -> tuple[list[Route], list[str]]:
    routes, problems = [], []
    files = sorted({p for g in SOURCE_GLOBS for p in root.glob(g)})
    for file in files:
        rel = file.relative_to(root).as_posix()
        src = file.read_text(encoding="utf-8")
        if rel.startswith("functions/"):
            owner = rel.split("/")[1]
            lib = root / "functions" / owner / "src" / "lib.rs"
            lib_src = strip_comments(lib.read_text(encoding="utf-8")) if lib.exists() else ""
            protected = "protected_app(" in lib_src or re.search(r"\bprotect\(", lib_src) is not None
        else:
            owner, protected = "probes", False
        found, bad = routes_in(src, rel, owner, protected)
        routes += found
        problems += bad
    return routes, problems


# ---------------------------------------------------------------- reading the spec


def spec_operations(spec: dict) -> dict[tuple[str, str], dict]:
    ops = {}
    for path, item in (spec.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        for method in HTTP_METHODS:
            if isinstance(item.get(method), dict):
                ops[(path, method)] = item[method]
    return ops


# ---------------------------------------------------------------- comparing


def compare(routes: list[Route], spec: dict) -> dict[str, list[str]]:
    """Failures of each comparison check, by check name (an empty list: it passed)."""
    ops = spec_operations(spec)
    documented_paths = {p for p, _ in ops}
    served: dict[str, set] = {}
    for r in routes:
        served.setdefault(r.path, set()).update(r.methods)

    missing = []
    for r in routes:
        if ANY in r.methods:
            if r.path not in documented_paths:
                missing.append(f"{r.path} (any method; {r.origin})")
            continue
        for method in sorted(r.methods):
            if (r.path, method) not in ops:
                missing.append(f"{method.upper()} {r.path} ({r.origin})")

    extra = []
    for path, method in sorted(ops):
        methods = served.get(path, set())
        if method not in methods and ANY not in methods:
            extra.append(f"{method.upper()} {path}")

    tags, security = [], []
    global_security = spec.get("security") or []
    for r in routes:
        for (path, method), op in sorted(ops.items()):
            if path != r.path or (method not in r.methods and ANY not in r.methods):
                continue
            label = f"{method.upper()} {path}"
            if r.owner not in (op.get("tags") or []):
                tags.append(f"{label}: tags {op.get('tags') or []} should include `{r.owner}` ({r.origin})")
            effective = op["security"] if "security" in op else global_security
            needs_key = any(requirement for requirement in effective)
            if r.protected and not needs_key:
                security.append(f"{label}: served behind an API key ({r.origin}) but its security is empty")
            if not r.protected and needs_key:
                security.append(f"{label}: served without an API key ({r.origin}) but its security asks for one")
    return {
        "routes documented": missing,
        "documented routes served": extra,
        "tags name the serving function": tags,
        "security matches the routers": security,
    }


# ---------------------------------------------------------------- validating the spec


def structural_problems(spec: dict) -> dict[str, list[str]]:
    problems: dict[str, list[str]] = {
        "structure (openapi 3.1, info, paths)": [],
        "$refs resolve": [],
        "path parameters declared": [],
        "operationIds unique": [],
        "every operation has responses": [],
    }
    s = problems["structure (openapi 3.1, info, paths)"]
    if not str(spec.get("openapi", "")).startswith("3.1"):
        s.append(f"openapi is {spec.get('openapi')!r}, not 3.1.x")
    info = spec.get("info") or {}
    for field in ("title", "version"):
        if not info.get(field):
            s.append(f"info.{field} is missing")
    if not isinstance(spec.get("paths"), dict) or not spec["paths"]:
        s.append("paths is missing or empty")

    def resolve(ref: str):
        if not ref.startswith("#/"):
            return None  # external: not ours to check
        node = spec
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, dict) or part not in node:
                raise KeyError(ref)
            node = node[part]
        return node

    def walk(node, where):
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                try:
                    resolve(ref)
                except KeyError:
                    problems["$refs resolve"].append(f"{where}: {ref}")
            for k, v in node.items():
                walk(v, f"{where}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}/{i}")

    walk(spec, "#")

    def param(p):
        if isinstance(p, dict) and "$ref" in p:
            try:
                return resolve(p["$ref"]) or {}
            except KeyError:
                return {}
        return p if isinstance(p, dict) else {}

    seen_ids: dict[str, str] = {}
    for path, item in (spec.get("paths") or {}).items():
        if not isinstance(item, dict):
            continue
        templated = set(re.findall(r"\{([^}]+)\}", path))
        shared = [param(p) for p in item.get("parameters") or []]
        for method in HTTP_METHODS:
            op = item.get(method)
            if not isinstance(op, dict):
                continue
            label = f"{method.upper()} {path}"
            params = shared + [param(p) for p in op.get("parameters") or []]
            declared = {p.get("name") for p in params if p.get("in") == "path"}
            for name in sorted(templated - declared):
                problems["path parameters declared"].append(f"{label}: {{{name}}} has no path parameter")
            for name in sorted(declared - templated):
                problems["path parameters declared"].append(f"{label}: path parameter {name} is not in the path")
            for p in params:
                if p.get("in") == "path" and p.get("required") is not True:
                    problems["path parameters declared"].append(f"{label}: path parameter {p.get('name')} must be required")
            op_id = op.get("operationId")
            if op_id:
                if op_id in seen_ids:
                    problems["operationIds unique"].append(f"{op_id}: {seen_ids[op_id]} and {label}")
                seen_ids[op_id] = label
            if not op.get("responses"):
                problems["every operation has responses"].append(label)
    return problems


def validator_result(path: Path, install: bool) -> tuple[str, str]:
    """("ok"|"FAIL"|"skip", detail) from openapi-spec-validator."""
    try:
        from openapi_spec_validator import validate  # noqa: F401
    except ImportError:
        if not install:
            return "skip", "openapi-spec-validator is not installed (--no-install); structural checks only"
        done = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "openapi-spec-validator"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            return "skip", "openapi-spec-validator could not be installed; structural checks only"
    try:
        from openapi_spec_validator import validate
        from openapi_spec_validator.readers import read_from_filename
    except ImportError:
        return "skip", "openapi-spec-validator could not be imported; structural checks only"
    try:
        spec_dict, _ = read_from_filename(str(path))
        validate(spec_dict)
    except Exception as err:  # the validator's own error types vary across versions
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return "FAIL", message
    try:
        from importlib.metadata import version

        which = f"openapi-spec-validator {version('openapi-spec-validator')}"
    except Exception:
        which = "openapi-spec-validator"
    return "ok", which


# ---------------------------------------------------------------- running


def report(name: str, failures: list[str], ok_detail: str = "") -> bool:
    if failures:
        print(f"FAIL  {name}: {len(failures)} problem(s)")
        for f in failures:
            print(f"        - {f}")
        return False
    print(f"ok    {name}" + (f" ({ok_detail})" if ok_detail else ""))
    return True


def run(spec_path: Path, install: bool) -> int:
    ok = True
    try:
        spec = yaml.safe_load(spec_path.read_text(encoding="utf-8"))
        if not isinstance(spec, dict):
            raise ValueError("not a mapping")
    except (OSError, yaml.YAMLError, ValueError) as err:
        print(f"FAIL  spec parses ({spec_path}): {err}")
        return 1
    rel = spec_path.relative_to(ROOT) if spec_path.is_relative_to(ROOT) else spec_path
    print(f"ok    spec parses ({rel}, OpenAPI {spec.get('openapi')})")

    status, detail = validator_result(spec_path, install)
    if status == "FAIL":
        ok = False
    print(f"{status:<5} spec validates: {detail}" if status != "ok" else f"ok    spec validates ({detail})")

    for name, failures in structural_problems(spec).items():
        ok &= report(name, failures)

    routes, problems = code_routes(ROOT)
    count = sum(len(r.methods) for r in routes)
    ok &= report("routes read from the routers", problems, f"{count} path+method from {len({r.origin.split(':')[0] for r in routes})} files")
    if not routes:
        ok &= report("routes read from the routers", ["no route found: has the layout changed?"])
    ops = spec_operations(spec)
    details = {
        "routes documented": f"{count} routes in the code",
        "documented routes served": f"{len(ops)} operations in the spec",
    }
    for name, failures in compare(routes, spec).items():
        ok &= report(name, failures, details.get(name, ""))
    return 0 if ok else 1


# ---------------------------------------------------------------- self-test

SELF_TEST_RUST = r'''
use axum::routing::{get, post};
// .route("/commented-out", get(nothing))
/* .route("/block-comment", post(nothing)) */
pub fn router(ctx: Arc<AppContext>) -> Router {
    let routes = Router::new()
        .route(
            "/v1/things",
            shared::http::idempotent(post(create), services.idempotency),
        )
        .route("/v1/things/{id}", get(show).delete(remove))
        .route("/v1/old/:id", get(show))
        .route("/v1/braces", get(|| async { "a ) in a string: \"(\"" }))
        .with_state(state);
    let routed = self.route(provider.as_ref(), &request.model, Mode::Plain);
    ctx.protected_app(routes, false)
}
#[cfg(test)]
mod tests {
    fn fixture() -> Router { Router::new().route("/only-in-tests", get(x)) }
}
'''


def self_test_spec(paths: dict) -> dict:
    return {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "security": [{"apiKey": []}],
        "paths": paths,
        "components": {"securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "x-api-key"}}},
    }


def op(tag="things", security=None):
    o = {"tags": [tag], "responses": {"200": {"description": "ok"}}}
    if security is not None:
        o["security"] = security
    return o


def self_test() -> int:
    failures = []
    checked = []

    def expect(name, condition, detail=""):
        checked.append(name)
        print(f"{'ok' if condition else 'FAIL':<5} self-test: {name}" + (f" ({detail})" if detail and not condition else ""))
        if not condition:
            failures.append(name)

    routes, problems = routes_in(SELF_TEST_RUST, "functions/things/src/lib.rs", "things", True)
    got = sorted((r.path, m) for r in routes for m in r.methods)
    want = sorted(
        [
            ("/v1/things", "post"),
            ("/v1/things/{id}", "get"),
            ("/v1/things/{id}", "delete"),
            ("/v1/old/{id}", "get"),
            ("/v1/braces", "get"),
        ]
    )
    expect("reads multi-line, chained and wrapped routes; skips comments, tests and self.route", got == want, f"got {got}")
    expect("no unreadable route in the example", problems == [], f"{problems}")

    id_param = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    complete = {
        "/v1/things": {"post": op()},
        "/v1/things/{id}": {"parameters": [id_param], "get": op(), "delete": op()},
        "/v1/old/{id}": {"parameters": [id_param], "get": op()},
        "/v1/braces": {"get": op()},
    }
    result = compare(routes, self_test_spec(complete))
    expect("a complete spec passes", not any(result.values()), f"{result}")

    missing = {k: dict(v) for k, v in complete.items()}
    del missing["/v1/things/{id}"]["delete"]
    result = compare(routes, self_test_spec(missing))
    expect(
        "a route missing from the spec is reported",
        len(result["routes documented"]) == 1 and result["routes documented"][0].startswith("DELETE /v1/things/{id}"),
        f"{result['routes documented']}",
    )

    extra = {k: dict(v) for k, v in complete.items()}
    extra["/v1/things"]["get"] = op()
    extra["/v1/ghost"] = {"get": op()}
    result = compare(routes, self_test_spec(extra))
    expect(
        "documented routes the code does not serve are reported",
        result["documented routes served"] == ["GET /v1/ghost", "GET /v1/things"],
        f"{result['documented routes served']}",
    )

    wrong = {k: dict(v) for k, v in complete.items()}
    wrong["/v1/braces"] = {"get": op(tag="other", security=[])}
    result = compare(routes, self_test_spec(wrong))
    expect("a wrong tag is reported", len(result["tags name the serving function"]) == 1)
    expect("a protected route documented without a key is reported", len(result["security matches the routers"]) == 1)

    nested, problems = routes_in('Router::new().nest("/api", inner)', "functions/x/src/lib.rs", "x", False)
    expect("a nested router is refused rather than skipped", nested == [] and len(problems) == 1, f"{problems}")

    broken = self_test_spec({"/v1/things/{id}": {"get": {"operationId": "a", "responses": {"200": {"$ref": "#/components/responses/Nope"}}}}})
    result = structural_problems(broken)
    expect("an undeclared path parameter is reported", len(result["path parameters declared"]) == 1)
    expect("a dangling $ref is reported", len(result["$refs resolve"]) == 1)

    print(f"{len(checked) - len(failures)} passed, {len(failures)} failed")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--no-install", action="store_true", help="do not pip install openapi-spec-validator")
    parser.add_argument("--self-test", action="store_true", help="prove the checks catch a missing and an extra route")
    args = parser.parse_args()
    if args.self_test:
        return self_test()
    return run(args.spec.resolve(), install=not args.no_install)


if __name__ == "__main__":
    sys.exit(main())
