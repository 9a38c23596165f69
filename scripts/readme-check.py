#!/usr/bin/env python3
"""Runs every command block of the README against `make run`, so the docs cannot drift.

Starts `scripts/run-local.sh` (what `make run` runs) on a free port with a fresh SQLite
database, and the fake OpenAI server (what `make fake-openai` runs) on another, then runs:
- every ```sh block of README.md, except those whose fence says `no-check` (`make test`
  itself, deploys), with the README's ports replaced by the free ones;
- every ```python block (the official OpenAI SDK against the chat function);
- the "Try:" commands that `make run` prints in its banner.

Each `curl` must answer 2xx, or the status its line's comment starts with, and then a
body that starts like the JSON after it, up to its first `...` (`curl ... /nope   # 404
{"error":{"message":"no route for GET /nope",...}}`); `cargo lambda invoke` must succeed. Any failure prints
the command, its status and body, and the server's log, and exits non-zero.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README_PORT, FAKE_PORT = "9000", "8090"

# Every block runs under `set -euo pipefail` with curl and cargo wrapped: the wrapper
# checks the status and prints one line per command.
PREAMBLE = r"""
set -euo pipefail
body=$(mktemp)
curl() {
  local status
  if ! status=$(command curl --max-time 60 -sS -o "$body" -w '%{http_code}' "$@"); then
    echo "FAILED (curl could not complete): curl $*"; exit 1
  fi
  if [[ -n "${EXPECT:-}" && "$status" != "$EXPECT" ]] || [[ -z "${EXPECT:-}" && "$status" != 2* ]]; then
    echo "FAILED (status $status, expected ${EXPECT:-2xx}): curl $*"; head -c 2000 "$body"; echo; exit 1
  fi
  if [[ -n "${EXPECT_BODY:-}" ]] && [[ "$(tr -d ' \n' <"$body")" != "${EXPECT_BODY// /}"* ]]; then
    echo "FAILED (the body does not start with $EXPECT_BODY): curl $*"; head -c 2000 "$body"; echo; exit 1
  fi
  echo "ok $status: curl $*"
}
cargo() {
  local out
  if ! out=$(command cargo "$@" 2>&1); then
    echo "FAILED: cargo $*"; echo "$out" | tail -20; exit 1
  fi
  echo "ok: cargo $*"
}
"""


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def blocks(markdown: str):
    """(language, fence info, body) of every fenced block."""
    fence = r"^[ \t]*```(\w*)([^\n]*)\n(.*?)^[ \t]*```"
    for match in re.finditer(fence, markdown, re.S | re.M):
        yield match.group(1), match.group(2), match.group(3)


def with_expectations(script: str) -> str:
    """`curl ... # 404 {"error":...}` becomes `EXPECT=404 EXPECT_BODY='{"error":' curl ...`:
    the status, and the start of the body up to the comment's first `...`."""
    lines = []
    for line in script.splitlines():
        expected = re.search(r"#\s*(\d{3})\b\s*(\{.*?)?(?:\.\.\.|$)", line)
        if expected and "curl " in line.split("#")[0]:
            prefix = f"EXPECT={expected.group(1)} "
            if expected.group(2):
                quoted = expected.group(2).replace("'", "'\\''")
                prefix += f"EXPECT_BODY='{quoted}' "
            line = line.replace("curl ", prefix + "curl ", 1)
        lines.append(line)
    return "\n".join(lines) + "\n"


def wait_for(url: str, seconds: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        if server.poll() is not None:
            fail(f"the server exited ({server.returncode}) before {url} answered", log)
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.5)
    fail(f"{url} did not answer 200 within {seconds} s", log)


def fail(message: str, log: Path | None = None) -> None:
    print(f"readme-check: {message}", file=sys.stderr)
    if log and log.exists():
        print("---- make run's log (last 60 lines)", file=sys.stderr)
        print("\n".join(log.read_text(errors="replace").splitlines()[-60:]), file=sys.stderr)
    sys.exit(1)


def banner_commands(log_text: str) -> str:
    """The commands under "Try:" in make run's banner, continuation lines joined."""
    match = re.search(r"^\s*Try:\n(.*?)\n\s*\n", log_text, re.S | re.M)
    if not match:
        return ""
    return "\n".join(line.strip() for line in match.group(1).splitlines()) + "\n"


def run_block(name: str, script: str, env: dict, log: Path) -> None:
    print(f"== {name}")
    result = subprocess.run(
        ["bash", "-c", PREAMBLE + with_expectations(script)],
        cwd=ROOT, env=env, text=True, capture_output=True, timeout=300,
    )
    print(result.stdout, end="")
    if result.returncode != 0:
        print(result.stderr, end="", file=sys.stderr)
        fail(f"{name} failed", log)


def stop(process: subprocess.Popen | None) -> None:
    """Ends a process started in a session of its own, and everything it started."""
    if process is None or process.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def main() -> None:
    # A SIGTERM (CI's timeout, make's interrupt) unwinds through `finally` below, so the
    # servers never outlive the check.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    port, fake_port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="readme-check-"))
    log = work / "make-run.log"
    env = dict(os.environ)
    env.update(PORT_LAMBDA=port, DATABASE_URL=f"sqlite://{work}/app.db", BACKUP_URL=f"file://{work}/backups")
    env.pop("PORT", None)
    target = Path(env.get("CARGO_TARGET_DIR", ROOT / "target"))
    with open(log, "w") as out:
        server = subprocess.Popen(
            ["scripts/run-local.sh", "local/embedded.env"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    fake = None
    try:
        # The first build happens here when nothing is built yet (make run's cost).
        wait_for(f"http://127.0.0.1:{port}/health/ready", 1800, server, log)
        fake = subprocess.Popen(
            [str(target / "debug" / "fake-openai"), "--port", fake_port],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        wait_for(f"http://127.0.0.1:{fake_port}/_fake/calls", 30, fake, log)
        if subprocess.run([sys.executable, "-c", "import openai"], capture_output=True).returncode:
            subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "openai"], check=True)

        def local(text: str) -> str:
            return (text.replace(f"127.0.0.1:{README_PORT}", f"127.0.0.1:{port}")
                        .replace(f"--invoke-port {README_PORT}", f"--invoke-port {port}")
                        .replace(f"127.0.0.1:{FAKE_PORT}", f"127.0.0.1:{fake_port}"))

        readme = (ROOT / "README.md").read_text()
        checked = 0
        for number, (language, info, body) in enumerate(blocks(readme), 1):
            if "no-check" in info:
                continue
            if language in ("bash", "shell", "console", "zsh"):
                fail(f"README block {number} is fenced `{language}`: fence commands as `sh` "
                     "(checked) or add `no-check` after the language")
            if language == "sh":
                run_block(f"README block {number} (sh)", local(body), env, log)
                checked += 1
            elif language == "python":
                print(f"== README block {number} (python)")
                result = subprocess.run([sys.executable, "-c", local(body)], cwd=ROOT,
                                        text=True, capture_output=True, timeout=120)
                if result.returncode != 0:
                    print(result.stderr, file=sys.stderr)
                    fail(f"README block {number} (python) failed", log)
                print("ok: the Python block ran")
                checked += 1
        banner = banner_commands(log.read_text(errors="replace"))
        if not banner:
            fail("make run printed no Try: commands", log)
        run_block("make run's banner", banner, env, log)
        print(f"readme-check: {checked} README blocks and the banner's commands passed")
    finally:
        stop(fake)
        stop(server)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
