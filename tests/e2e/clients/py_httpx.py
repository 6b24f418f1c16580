"""Plain `httpx`: an OpenAI chat completion and an Anthropic message stream, by hand."""

import httpx

MSGS = [{"role": "user", "content": "Say hello"}]
with httpx.Client(timeout=30) as client:
    r = client.post(
        "https://api.openai.com/v1/chat/completions",
        headers={"authorization": "Bearer sk-test-httpx"},
        json={"model": "gpt-4o-mini", "messages": MSGS},
    )
    print(r.json()["choices"][0]["message"]["content"])
    body = {"model": "claude-haiku-4-5", "max_tokens": 64, "messages": MSGS, "stream": True}
    headers = {"x-api-key": "sk-ant-test-httpx", "anthropic-version": "2023-06-01"}
    with client.stream("POST", "https://api.anthropic.com/v1/messages", headers=headers, json=body) as r:
        events = [line for line in r.iter_lines() if line.startswith("event: ")]
    print(len(events), "events")

    import other

    other.check(lambda url: client.get(url).json())
