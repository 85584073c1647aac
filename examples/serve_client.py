"""Query a running ``rayreward serve`` from an RL job: plain HTTP, then the Ray handle.

Start a server first, e.g.::

    rayreward serve --model runs/demo/model --name rm           # prints http://127.0.0.1:8000/rm

then::

    python examples/serve_client.py --url http://127.0.0.1:8000/rm
    python examples/serve_client.py --handle rm --address auto  # from a driver on the same Ray cluster

An OpenRLHF job uses the same server unchanged: ``--remote_rm_url http://HOST:8000/rm/get_reward``.
"""

from __future__ import annotations

import argparse
import json
import urllib.request

PAIRS = [{"prompt": "Human: How do I boil an egg?\n\nAssistant:",
          "chosen": " Put it in boiling water for about nine minutes.", "rejected": " No idea."}]
TEXTS = ["Human: Hi\n\nAssistant: Hello! How can I help you today?", "Human: Hi\n\nAssistant: Go away."]


def post(url: str, body: dict) -> dict:
    """One JSON POST with the standard library; a 4xx answer carries ``error`` and ``field``."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, **json.load(exc)}


def over_http(url: str) -> None:
    print("info:", json.dumps(json.load(urllib.request.urlopen(f"{url}/info", timeout=30)), indent=1))
    # OpenRLHF's API: whole texts in, one reward each out.
    print("get_reward:", post(f"{url}/get_reward", {"query": TEXTS}))
    # Typed API: prompt + response, chat messages, pairs (with P(chosen)), normalized on request.
    print("responses:", post(f"{url}/score", {"prompts": ["Human: Hi\n\nAssistant:"], "responses": [" Hello!"]}))
    print("messages:", post(f"{url}/score", {"messages": [[{"role": "user", "content": "Hi"},
                                                           {"role": "assistant", "content": "Hello!"}]]}))
    print("pairs:", post(f"{url}/score", {"pairs": PAIRS}))
    print("bad request:", post(f"{url}/score", {"texts": ["fine", ""]}))


def over_handle(name: str, address: str) -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():
        ray.init(address=address)
    handle = serve.get_app_handle(name)
    # The handle methods take the bodies of the HTTP routes and return the same answers.
    print("get_reward:", handle.get_reward.remote({"query": TEXTS}).result())
    print("pairs:", handle.score.remote({"pairs": PAIRS}).result())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="the server's base URL, as `rayreward serve` printed it")
    parser.add_argument("--handle", metavar="NAME", help="the application name, to use the Ray handle instead")
    parser.add_argument("--address", default="auto", help="Ray cluster of the server (with --handle)")
    args = parser.parse_args()
    if args.handle:
        over_handle(args.handle, args.address)
    else:
        over_http(args.url or "http://127.0.0.1:8000/rm")
