"""The openai SDK as an app uses it: default base URL, sync and async, JSON and streaming."""

import asyncio

import httpx
from openai import AsyncOpenAI, OpenAI

MSGS = [{"role": "user", "content": "Say hello"}]


async def main_async() -> None:
    client = AsyncOpenAI(api_key="sk-test-openai", max_retries=0)
    reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS)
    print(reply.choices[0].message.content)
    stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
    print("".join([c.choices[0].delta.content or "" async for c in stream if c.choices]))


def main() -> None:
    client = OpenAI(api_key="sk-test-openai", max_retries=0)
    print(client.chat.completions.create(model="gpt-4o-mini", messages=MSGS).choices[0].message.content)
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MSGS, stream=True)
    print("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    asyncio.run(main_async())


if __name__ == "__main__":
    main()
    import other  # the app's other HTTPS calls, with the SDK's own HTTP stack (httpx)

    other.check(lambda url: httpx.get(url).json())
