// The openai npm package as a Node app uses it: default base URL, JSON and streaming.
import OpenAI from "openai";

const client = new OpenAI({ apiKey: "sk-test-node", maxRetries: 0 });
const messages = [{ role: "user", content: "Say hello" }];
const reply = await client.chat.completions.create({ model: "gpt-4o-mini", messages });
console.log(reply.choices[0].message.content);
const stream = await client.chat.completions.create({ model: "gpt-4o-mini", messages, stream: true });
let text = "";
for await (const chunk of stream) text += chunk.choices[0]?.delta?.content ?? "";
console.log(text);
for (const name of ["OTHER_DIRECT", "OTHER_PROXIED"]) {
  const body = await (await fetch(process.env[name])).json();
  console.log(`other ${name.toLowerCase()}: ${body.ok ? "True" : "False"}`);
}
