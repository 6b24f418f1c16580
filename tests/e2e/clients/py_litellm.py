"""litellm's Python SDK as a client: its OpenAI provider, JSON and streaming."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # offline: no price map download

import httpx  # noqa: E402
import litellm  # noqa: E402

MSGS = [{"role": "user", "content": "Say hello"}]
reply = litellm.completion(model="gpt-4o-mini", messages=MSGS, api_key="sk-test-litellm", num_retries=0)
print(reply.choices[0].message.content)
stream = litellm.completion(model="gpt-4o-mini", messages=MSGS, api_key="sk-test-litellm", stream=True)
print("".join(c.choices[0].delta.content or "" for c in stream if c.choices))

import other  # noqa: E402

other.check(lambda url: httpx.get(url).json())
