"""Changes the behaviour of the project's fake OpenAI server (local/fake-openai) over its
control route, for the Python client checks."""

import json
import urllib.request


def set_behaviour(fake_url, behaviour):
    """PUT /_fake/behaviour; `{}` restores the defaults."""
    request = urllib.request.Request(
        fake_url.rstrip("/") + "/_fake/behaviour",
        data=json.dumps(behaviour).encode(),
        method="PUT",
        headers={"content-type": "application/json"},
    )
    urllib.request.urlopen(request).read()
