"""Plain `requests`: an OpenAI chat completion and a Gemini SSE stream, by hand."""

import requests

MSGS = [{"role": "user", "content": "Say hello"}]
r = requests.post(
    "https://api.openai.com/v1/chat/completions",
    headers={"authorization": "Bearer sk-test-requests"},
    json={"model": "gpt-4o-mini", "messages": MSGS},
    timeout=30,
)
print(r.json()["choices"][0]["message"]["content"])
url = "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.0-flash:streamGenerateContent"
body = {"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}]}
with requests.post(url, params={"alt": "sse"}, headers={"x-goog-api-key": "AIza-test"}, json=body,
                   stream=True, timeout=30) as r:  # fmt: skip
    lines = [line for line in r.iter_lines() if line.startswith(b"data: ")]
print(len(lines), "events")

import other  # noqa: E402

other.check(lambda url: requests.get(url, timeout=30).json())
