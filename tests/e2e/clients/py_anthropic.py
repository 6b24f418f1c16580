"""The anthropic SDK as an app uses it: default base URL, sync and async, JSON and streaming."""

import asyncio

import httpx
from anthropic import Anthropic, AsyncAnthropic

MSGS = [{"role": "user", "content": "Say hello"}]
MODEL = "claude-haiku-4-5"


async def main_async() -> None:
    client = AsyncAnthropic(api_key="sk-ant-test", max_retries=0)
    reply = await client.messages.create(model=MODEL, max_tokens=64, messages=MSGS)
    print(reply.content[0].text)
    async with client.messages.stream(model=MODEL, max_tokens=64, messages=MSGS) as stream:
        print("".join([t async for t in stream.text_stream]))


def main() -> None:
    client = Anthropic(api_key="sk-ant-test", max_retries=0)
    print(client.messages.create(model=MODEL, max_tokens=64, messages=MSGS).content[0].text)
    with client.messages.stream(model=MODEL, max_tokens=64, messages=MSGS) as stream:
        print("".join(stream.text_stream))
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
    import other

    other.check(lambda url: httpx.get(url).json())
