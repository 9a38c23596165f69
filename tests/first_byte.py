"""Checks that a streamed chat answer reaches the caller while the provider is still
sending it (C1: streaming under Lambda is incremental, not buffered and sent whole).

Usage: python3 tests/first_byte.py BASE_URL API_KEY FAKE_URL
The fake provider is made to wait 2 s between chunks, so its whole answer takes over
20 s; the first content chunk must arrive well before that, with the stream still open.
"""

import json
import socket
import sys
import urllib.request

from fake_control import set_behaviour

base_url, api_key, fake_url = sys.argv[1], sys.argv[2], sys.argv[3]


def fake(behaviour):
    set_behaviour(fake_url, behaviour)


fake({"chunk_delay_ms": 2000})
try:
    body = json.dumps({
        "model": "gpt-4o-mini",
        "stream": True,
        "cache": False,
        "messages": [{"role": "user", "content": "Stream this answer slowly please."}],
    }).encode()
    request = urllib.request.Request(
        base_url.rstrip("/") + "/v1/chat/completions",
        data=body,
        method="POST",
        headers={"content-type": "application/json", "authorization": f"Bearer {api_key}"},
    )
    # Generous against a 20 s answer, so only a buffered response can miss it.
    response = urllib.request.urlopen(request, timeout=8)
    first = None
    for raw in response:
        line = raw.decode().strip()
        if line.startswith("data: ") and '"content"' in line:
            first = line
            break
    if first is None:
        print("FAIL first byte: the stream ended without a content chunk")
        sys.exit(1)
    print(f"ok   first content chunk arrived while the provider was still streaming: {first[:80]}")
    response.close()
except (socket.timeout, TimeoutError) as e:
    print(f"FAIL first byte: nothing within 8 s of a 20 s answer (buffered?): {e}")
    sys.exit(1)
finally:
    fake({})
