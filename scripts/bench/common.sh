# Shared by the gateway bench scripts (sourced, not run): waiting for a URL, the fake
# upstream started on $upstream_port, and the bench key with its hash for API_KEYS.
# Expects `bin`, `work`, `upstream_port` and a `pids` array set by the script.

wait_for() { for _ in $(seq 1 600); do curl -sf "$1" >/dev/null 2>&1 && return 0; sleep 0.1; done; echo "not up: $1" >&2; exit 1; }

# Starts the project's fake OpenAI-compatible upstream and waits until it answers.
start_fake() {
  "$bin/fake-openai" --port "$upstream_port" >"$work/fake.log" 2>&1 &
  pids+=($!)
  wait_for "http://127.0.0.1:$upstream_port/_fake/calls"
}

key=bench-key-0123456789
key_hash=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
