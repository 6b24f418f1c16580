"""Lose nothing, as users stop, time and call: Ctrl-C right after the last answer, feedback sent
later to a quiet proxy (or a new one), the next identical call sent the moment the first returned.

Each proxy runs in its own session, as a shell job or a systemd unit does; no test sleeps to give
the writer time: every wait is for a fact (a row in the file), bounded.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from anthropic import Anthropic
from openai import OpenAI

from llmtap.storage import rollup
from tests.e2e.conftest import Proxy
from tests.fakeprovider import FakeProvider

MSGS = [{"role": "user", "content": "Say hello"}]
REPLY = "Hello from the fake provider!"
LLMTAP = [str(Path(sys.executable).with_name("llmtap"))]


def calls(proxy: Proxy) -> list[str]:
    """Six calls the way apps make them (JSON and streams, both SDKs); their Helicone-Ids."""
    oai = OpenAI(base_url=f"{proxy.url}/v1", api_key="sk-test", max_retries=0)
    claude = Anthropic(base_url=proxy.url, api_key="sk-ant-test", max_retries=0)
    ids = []
    for _ in range(2):
        raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS)
        assert raw.parse().choices[0].message.content == REPLY
        ids.append(raw.headers["helicone-id"])
    raw = oai.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MSGS, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices) == REPLY
    ids.append(raw.headers["helicone-id"])
    with claude.messages.with_streaming_response.create(
        model="claude-haiku-4-5", max_tokens=32, messages=MSGS, stream=True
    ) as resp:
        ids.append(resp.headers["helicone-id"])
        assert b"message_stop" in resp.read()
    for _ in range(2):
        raw = claude.messages.with_raw_response.create(model="claude-haiku-4-5", max_tokens=32, messages=MSGS)
        assert raw.parse().content[0].text == REPLY
        ids.append(raw.headers["helicone-id"])
    return ids


STOPS = {
    "ctrl-c (SIGINT to the group)": (signal.SIGINT, True),
    "systemd / kill -- -PGID (SIGTERM to the group)": (signal.SIGTERM, True),
    "kill PID (SIGTERM to mitmdump)": (signal.SIGTERM, False),
    "SIGINT to mitmdump": (signal.SIGINT, False),
}


@pytest.mark.parametrize("how", list(STOPS))
def test_every_answered_call_survives_the_stop(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], how: str
) -> None:
    """Calls from the moment the proxy listens (its writer may still be starting), then the signal
    at once after the last answer: every row is in the file, exactly once."""
    sig, group = STOPS[how]
    proxy = start_proxy("--mode", f"reverse:{fake.url}", flush_ms=1000)
    ids = calls(proxy)
    assert proxy.stop(sig, group) == 0, proxy.log()
    assert_all_stored(proxy, ids)


def test_llmtap_proxy_interrupted_keeps_every_call(
    fake: FakeProvider, start_proxy: Callable[..., Proxy]
) -> None:
    proxy = start_proxy("--mode", f"reverse:{fake.url}", command=[*LLMTAP, "proxy"], flush_ms=1000)
    ids = calls(proxy)
    assert proxy.stop(signal.SIGINT, group=True) == 0, proxy.log()
    assert_all_stored(proxy, ids)


def assert_all_stored(proxy: Proxy, ids: list[str]) -> None:
    found = [r["request_id"] for r in proxy.select("SELECT request_id FROM requests")]
    assert sorted(found) == sorted(ids), proxy.log()
    log = proxy.log()
    assert "KeyboardInterrupt" not in log and "could not be written" not in log, log
    assert f"llmtap: {len(ids)} rows written, 0 dropped" in log, log
    # Each batch also went into the dashboard's rollup, in its own transaction: all of them, once.
    rolled = proxy.select(f"SELECT {', '.join(rollup.NAMES)} FROM {rollup.TABLE} ORDER BY ALL")
    assert rolled == proxy.select(f"{rollup.aggregate_sql('true')} ORDER BY ALL")
    assert sum(r["calls"] for r in rolled) == len(ids)


# -- feedback, scores and properties that come later --


def api(proxy: Proxy, method: str, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(
        proxy.api + path, json.dumps(body).encode(), {"content-type": "application/json"}, method=method
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def annotate(proxy: Proxy, rid: str) -> None:
    """What a person rating an answer, and an evaluation job scoring it, send."""
    assert api(proxy, "POST", f"/v1/request/{rid}/feedback", {"rating": True})[0] == 201
    scores = {"scores": {"accuracy": 92, "is_safe": True}}
    assert api(proxy, "POST", f"/v1/request/{rid}/score", scores)[0] == 201
    assert api(proxy, "PUT", f"/v1/request/{rid}/property", {"key": "Reviewed", "value": "yes"})[0] == 200


def annotations(proxy: Proxy, rid: str) -> tuple[list[Any], list[Any], Any]:
    sql = "SELECT rating FROM feedback WHERE request_id = ? ORDER BY created_at"
    feedback = [r["rating"] for r in proxy.select(sql, [rid])]
    scores = proxy.select("SELECT name, value FROM scores WHERE request_id = ? ORDER BY name", [rid])
    [row] = proxy.select("SELECT properties FROM requests WHERE request_id = ?", [rid])
    return feedback, [(s["name"], s["value"]) for s in scores], json.loads(row["properties"])


def test_annotations_to_a_quiet_proxy_are_stored_within_a_flush_and_survive_the_stop(
    gateway: Proxy,
) -> None:
    [rid] = calls(gateway)[:1]
    gateway.wait_rows("SELECT 1 FROM requests", 6)  # the calls are in the file; nothing else happens
    annotate(gateway, rid)
    # No other traffic: they must still reach the file within a flush interval (200 ms here).
    gateway.wait_rows("SELECT 1 FROM feedback", 1, timeout=5)
    gateway.wait_rows("SELECT 1 FROM scores", 2, timeout=5)
    gateway.wait_rows("SELECT 1 FROM requests WHERE properties->>'reviewed' = 'yes'", 1, timeout=5)
    assert gateway.stop() == 0
    assert annotations(gateway, rid) == ([True], [("accuracy", 92), ("is_safe", 1)], {"reviewed": "yes"})


def test_annotations_right_before_ctrl_c_are_stored(gateway: Proxy) -> None:
    rid = calls(gateway)[0]
    annotate(gateway, rid)
    assert gateway.stop() == 0  # at once: only the final flush can have them
    assert "4 feedback, score and property updates written" in gateway.log()
    assert annotations(gateway, rid) == ([True], [("accuracy", 92), ("is_safe", 1)], {"reviewed": "yes"})


def test_annotations_for_calls_an_earlier_proxy_logged(
    fake: FakeProvider, start_proxy: Callable[..., Proxy], tmp_path: Path
) -> None:
    db = tmp_path / "shared.duckdb"
    first = start_proxy("--mode", f"reverse:{fake.url}", db=db)
    rid = calls(first)[3]
    assert first.stop() == 0
    second = start_proxy("--mode", f"reverse:{fake.url}", db=db)  # yesterday's calls, today's proxy
    annotate(second, rid)
    second.wait_rows("SELECT 1 FROM feedback", 1, timeout=5)
    assert second.stop() == 0
    assert annotations(second, rid) == ([True], [("accuracy", 92), ("is_safe", 1)], {"reviewed": "yes"})


def llmtap(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*LLMTAP, *args], capture_output=True, text=True, env=dict(os.environ), timeout=60)


def test_annotation_commands_through_the_api_and_into_the_file(gateway: Proxy) -> None:
    rid = calls(gateway)[0]
    where = ["--api", gateway.api.removeprefix("http://"), "--db", str(gateway.db)]
    for args in (["feedback", rid, "--rating", "up"], ["score", rid, "accuracy=92", "is_safe=true"],
                 ["property", rid, "Reviewed=yes"]):  # fmt: skip
        out = llmtap(*args, *where)
        assert out.returncode == 0 and "through the proxy" in out.stdout, out.stderr
    gateway.wait_rows("SELECT 1 FROM feedback", 1, timeout=5)  # a quiet proxy stores them too
    gateway.wait_rows("SELECT 1 FROM requests WHERE properties->>'reviewed' = 'yes'", 1, timeout=5)
    assert gateway.stop() == 0
    assert annotations(gateway, rid) == ([True], [("accuracy", 92), ("is_safe", 1)], {"reviewed": "yes"})

    offline = ["--api", "127.0.0.1:9", "--db", str(gateway.db)]  # no proxy: straight into the file
    for args in (["feedback", rid, "--rating", "down"], ["score", rid, "accuracy=40"],
                 ["property", rid, "reviewed=twice", "team=search"]):  # fmt: skip
        out = llmtap(*args, *offline)
        assert out.returncode == 0 and "no proxy answered" in out.stdout, out.stderr
    feedback, scores, props = annotations(gateway, rid)
    assert feedback == [True, False] and ("accuracy", 40) in scores
    assert props == {"reviewed": "twice", "team": "search"}
    bad = llmtap("property", rid, "novalue", *offline)
    assert bad.returncode == 1 and "expected name=value, got 'novalue'" in bad.stderr
