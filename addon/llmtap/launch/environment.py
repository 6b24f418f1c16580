"""The environment that makes an unmodified app's LLM calls go through the proxy, trusted.

Every HTTP stack reads its own variables: the proxy from HTTPS_PROXY / https_proxy (curl reads
only the lower-case http_proxy), the roots from SSL_CERT_FILE (OpenSSL, httpx, the openai and
anthropic SDKs), REQUESTS_CA_BUNDLE (requests), CURL_CA_BUNDLE (curl), NODE_EXTRA_CA_CERTS (Node,
added to its own roots), AWS_CA_BUNDLE (boto3, Bedrock) and GRPC_DEFAULT_SSL_ROOTS_FILE_PATH
(gRPC clients such as Vertex AI's). NO_PROXY keeps loopback direct, so the local API and local
servers are reached without the proxy.

Node's built-in fetch ignores HTTPS_PROXY unless NODE_USE_ENV_PROXY=1, which Node honours from
v24.0 and v22.21. Older Node gets a preload (NODE_OPTIONS=--require) that routes fetch through
undici's EnvHttpProxyAgent: undici must be installed where the app resolves modules, or in
llmtap's config dir (`npm install --prefix ~/.config/llmtap undici`).
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

from llmtap.launch import trust

CA_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "AWS_CA_BUNDLE",
    "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH",
)
LOOPBACK = ("localhost", "127.0.0.1", "::1")
PRELOAD_NAME = "node-env-proxy.cjs"
PRELOAD = """\
// llmtap: route Node's fetch through HTTPS_PROXY on Node versions without NODE_USE_ENV_PROXY.
// Written by `llmtap run` / `llmtap env`; see llmtap's README, "Use it with Node".
(function () {
  const [major, minor] = process.versions.node.split(".").map(Number);
  if (major >= 24 || (major === 22 && minor >= 21) || !process.env.HTTPS_PROXY) return;
  const path = require("path");
  const where = [process.cwd(), path.join(__dirname, "node_modules")];
  let undici;
  try {
    undici = require(require.resolve("undici", { paths: where }));
  } catch (e) {
    if (!process.env.LLMTAP_NODE_QUIET) {
      process.stderr.write(
        "llmtap: Node " + process.versions.node + " ignores HTTPS_PROXY for fetch; install undici " +
          "(npm install undici) so its calls reach the proxy, or use Node >= 22.21\\n");
    }
    return;
  }
  undici.setGlobalDispatcher(new undici.EnvHttpProxyAgent());
})();
"""


def variables(proxy_url: str, bundle: Path, api: str | None = None) -> dict[str, str]:
    """The variables to set, over whatever the caller's environment holds."""
    env = {name: proxy_url for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy")}
    no_proxy = _no_proxy(os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or "")
    env |= {"NO_PROXY": no_proxy, "no_proxy": no_proxy}
    env |= {name: str(bundle) for name in CA_VARIABLES}
    env["NODE_USE_ENV_PROXY"] = "1"
    preload = node_preload()
    options = os.environ.get("NODE_OPTIONS", "")
    if str(preload) not in options:
        options = f"{options} --require {shlex.quote(str(preload))}".strip()
    env["NODE_OPTIONS"] = options
    if api:
        env["LLMTAP_API"] = api
    return env


def node_preload() -> Path:
    """The preload script for older Node, written once under llmtap's config dir."""
    path = trust.config_dir() / PRELOAD_NAME
    if not path.exists() or path.read_text() != PRELOAD:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(PRELOAD)
    return path


def exports(env: dict[str, str]) -> str:
    """POSIX shell lines for `eval "$(llmtap env)"`."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items())


def _no_proxy(existing: str) -> str:
    names = [n.strip() for n in existing.split(",") if n.strip()]
    return ",".join([*names, *(h for h in LOOPBACK if h not in names)])
