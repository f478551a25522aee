"""Capture the /metrics answers in this directory from the real servers, two answers each
with known traffic between them (the unit tests of labctl.promtext and labctl.ops.top read
them; their expectations are the counts of that traffic).

    PYTHONPATH=src:tests python tests/golden/metrics/capture.py [--vllm http://127.0.0.1:PORT]

It starts the integration tier's stack (llama-server, llama-cpp-python and a LiteLLM
gateway from labctl's rendered units, tests/harness/localstack.py) on loopback from the
tool venvs, and asks a vLLM already serving ``tiny-awq`` when given one (tests/integration/
test_vllm.py shows how one is started). Between the two answers of each server:

* llama-server: 5 chat completions, 8 tokens at most each;
* vLLM: 6 chat completions, every other one streamed;
* the gateway: 4 rounds of one request per route (``native`` and ``small`` streamed), then
  llama-server killed (SIGKILL) and 4 requests for ``native``, each answered by its
  fallback ``bindings`` (LiteLLM puts ``native`` in cooldown on the way).
"""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
from harness import localstack

HERE = Path(__file__).resolve().parent


def chat(client: httpx.Client, url: str, model: str, *, stream: bool = False, key: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    resp = client.post(f"{url}/v1/chat/completions", headers=headers, json={
        "model": model, "max_tokens": 8, "stream": stream, "messages": [{"role": "user", "content": "Say something"}]})
    return resp.status_code


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vllm", help="base URL of a vLLM serving tiny-awq")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="labctl-capture-"))
    stack = localstack.start(root)
    client = httpx.Client(timeout=120, trust_env=False)
    try:
        native, gateway, key = stack.url("native"), stack.gateway_url, stack.key

        def save(name: str, url: str) -> None:
            (HERE / name).write_text(client.get(url).text)

        save("llama-server-0.txt", f"{native}/metrics")
        for _ in range(5):
            assert chat(client, native, "native") == 200
        save("llama-server-1.txt", f"{native}/metrics")

        if args.vllm:
            save("vllm-0.txt", f"{args.vllm}/metrics")
            for i in range(6):
                assert chat(client, args.vllm, "tiny-awq", stream=i % 2 == 0) == 200
            save("vllm-1.txt", f"{args.vllm}/metrics")

        for route in ("native", "bindings", "small"):  # every route's series exist before the first answer
            assert chat(client, gateway, route, key=key) == 200
        time.sleep(2)  # LiteLLM counts after it answers
        save("litellm-0.txt", f"{gateway}/metrics/")
        for _ in range(4):
            assert chat(client, gateway, "native", stream=True, key=key) == 200
            assert chat(client, gateway, "bindings", key=key) == 200
            assert chat(client, gateway, "small", stream=True, key=key) == 200
        proc = stack.servers["native"].proc
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for _ in range(4):
            assert chat(client, gateway, "native", key=key) == 200
        time.sleep(2)
        save("litellm-1.txt", f"{gateway}/metrics/")
    finally:
        client.close()
        stack.stop_all()
    print(f"captured into {HERE} (stack under {root})", file=sys.stderr)


if __name__ == "__main__":
    main()
