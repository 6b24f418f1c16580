"""An app as it is written for OpenAI and Anthropic: default base URLs, keys from the environment,
nothing about llmtap in it. `llmtap demo` runs it under `llmtap run`."""

from anthropic import Anthropic
from openai import OpenAI

MSGS = [{"role": "user", "content": "Say hello."}]


def main() -> None:
    openai = OpenAI(max_retries=0)
    reply = openai.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    print(f"app: openai chat       -> {reply.choices[0].message.content!r}")
    stream = openai.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    print(f"app: openai stream     -> {text!r}")
    message = Anthropic(max_retries=0).messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MSGS)
    print(f"app: anthropic message -> {message.content[0].text!r}")


if __name__ == "__main__":
    main()
