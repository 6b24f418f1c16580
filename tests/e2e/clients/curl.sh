#!/bin/sh
# curl with only the environment llmtap sets: an OpenAI chat completion, an Anthropic stream.
set -eu
reply=$(curl -sS --fail https://api.openai.com/v1/chat/completions \
  -H "authorization: Bearer sk-test-curl" -H "content-type: application/json" \
  -d '{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Say hello"}]}')
echo "$reply" | sed -n 's/.*"content": *"\([^"]*\)".*/\1/p'
curl -sS --fail -N https://api.anthropic.com/v1/messages \
  -H "x-api-key: sk-ant-test-curl" -H "anthropic-version: 2023-06-01" -H "content-type: application/json" \
  -d '{"model":"claude-haiku-4-5","max_tokens":64,"stream":true,"messages":[{"role":"user","content":"Say hello"}]}' \
  | grep -c '^event: ' | sed 's/$/ events/'
for name in OTHER_DIRECT OTHER_PROXIED; do
  eval "url=\$$name"
  ok=$(curl -sS --fail "$url" | sed -n 's/.*"ok": *\(true\|false\).*/\1/p')
  lower=$(echo "$name" | tr 'A-Z' 'a-z')
  [ "$ok" = true ] && echo "other $lower: True" || echo "other $lower: False"
done
