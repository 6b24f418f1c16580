"""google-genai (the Gemini SDK) as an app uses it: default endpoint, JSON and streaming."""

import httpx
from google import genai

client = genai.Client(api_key="AIza-test-gemini")
print(client.models.generate_content(model="gemini-2.0-flash", contents="Say hello").text)
stream = client.models.generate_content_stream(model="gemini-2.0-flash", contents="Say hello")
print("".join(chunk.text or "" for chunk in stream))

import other  # noqa: E402

other.check(lambda url: httpx.get(url).json())
