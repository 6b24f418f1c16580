"""langchain-openai's ChatOpenAI as an app uses it: invoke and stream."""

import httpx
from langchain_openai import ChatOpenAI

chat = ChatOpenAI(model="gpt-4o-mini", api_key="sk-test-langchain", max_retries=0)
print(chat.invoke("Say hello").content)
print("".join(chunk.content for chunk in chat.stream("Say hello")))

import other  # noqa: E402

other.check(lambda url: httpx.get(url).json())
