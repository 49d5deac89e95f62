#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs (fuzz/seeds/TARGET/) from the repo's own examples: the
shipped map, README examples, and the maps, bodies and templates the tests use. Re-run it after
adding examples; the corpora in fuzz/corpus/ grow from these seeds (docs/reliability.md)."""

import hashlib
import json
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent
SEEDS = ROOT / "fuzz" / "seeds"


def rust_strings(text):
    """The string literals of Rust source: "..." (with escapes) and r#"..."#."""
    out = []
    for m in re.finditer(r'r(#*)"(.*?)"\1', text, re.S):
        out.append(m.group(2))
    for m in re.finditer(r'(?<![r#\w])"((?:[^"\\]|\\.)*)"', text, re.S):
        raw = m.group(1)
        raw = re.sub(r"\\\n\s*", "", raw)  # line continuation
        try:
            out.append(raw.encode("utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8"))
        except (UnicodeDecodeError, UnicodeEncodeError):
            continue
    return out


def write(target, items):
    folder = SEEDS / target
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    seen = set()
    for item in items:
        data = item.encode("utf-8") if isinstance(item, str) else item
        if not data or data in seen:
            continue
        seen.add(data)
        (folder / hashlib.sha1(data).hexdigest()).write_bytes(data)
    print(f"{target}: {len(seen)} seeds")


readme = (ROOT / "README.md").read_text()
blocks = re.findall(r"```(\w*)\n(.*?)```", readme, re.S)
sources = [p.read_text() for p in sorted((ROOT / "tests").glob("*.rs"))]
sources += [p.read_text() for p in sorted((ROOT / "src").rglob("*.rs"))]
strings = [s for text in sources for s in rust_strings(text)]

# The map: the shipped one, README's YAML, and every map-looking string of the tests.
maps = [(ROOT / "reflex_map.yml").read_text()]
maps += [body for lang, body in blocks if lang == "yaml"]
maps += [s for s in strings if re.search(r"^\s*(reflexes|workflows|anomalies|defaults):", s, re.M)]
maps += [
    # Anchors and aliases as a person writes them.
    "workflows:\n  base: &hook {webhook: {url: 'http://127.0.0.1:5678/x', retries: 3}}\n  other: *hook\n"
    "reflexes:\n  a.b: base\n  'c.*': {workflow: other, params: &p {unit: nginx}, cooldown: 5m}\n"
    "  d.e: {workflow: other, params: *p}\n",
]
write("map_compile", maps)

# The anomaly body: README's example, and JSON objects of the tests that have a `name`.
bodies = [m for m in re.findall(r"-d '(\{.*?\})'", readme)]
bodies += [s for s in strings if s.lstrip().startswith("{") and '"name"' in s]
bodies += [
    json.dumps({"name": "api_latency.coinbase.high", "details": {"latency_ms": 5000, "region": "us-east-1"}}),
    json.dumps({"name": "nginx.web1.down"}),
    json.dumps({"name": "disk.sda.full", "details": {}, "extra": [1, 2, {"x": None}]}),
    json.dumps({"name": "x", "details": {"nested": {"a": [1.5, True, "s\n"]}}}),
    '{"name": "a", "details": {\n "multi": "line"\n}}',
    '{"name": 5}',
    '{"details": {}}',
    '[]',
    '{"name": "\\u00e9t\\u00e9.\\ud83d\\ude00"}',
]
write("anomaly_body", bodies)

# The Alertmanager payload, as Alertmanager 0.25 sends it (tests/alertmanager.rs).
def alert(status, labels, fingerprint):
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "it broke", "runbook_url": "http://wiki/runbook"},
        "startsAt": "2024-05-01T10:00:00.000Z",
        "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph?g0.expr=up+%3D%3D+0",
        "fingerprint": fingerprint,
    }


def payload(alerts, version="4"):
    return json.dumps({
        "version": version,
        "groupKey": '{}:{alertname="NginxDown"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "autohealer",
        "groupLabels": {"alertname": "NginxDown"},
        "commonLabels": {"alertname": "NginxDown"},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager:9093",
        "alerts": alerts,
    })


payloads = [
    payload([alert("firing", {"alertname": "NginxDown", "anomaly": "nginx.web1.down"}, "4f6cb5ae4e6d3a8f")]),
    payload([alert("resolved", {"alertname": "DiskFull"}, "01"), alert("firing", {"job": "x"}, "02")]),
    payload([alert("firing", {"alertname": "A"}, "")]),
    payload([], version="5"),
    '{"version": "4", "alerts": "many"}',
    '{"alerts": [{"labels": {}}]}',
]
payloads += [s for s in strings if '"alerts"' in s]
write("alertmanager_payload", payloads)

# Templates: each `{{...}}` string of the repo on the first line, details JSON after it.
templates = sorted({t for s in strings + [readme] for t in re.findall(r"[^\s'\"\[\],]*\{\{[^}]*\}\}[^\s'\"\[\],]*", s)})
details = '{"unit": "nginx", "latency_ms": 5000, "nested": {"key": ["a", 1]}, "host": "web-1"}'
write("template", [f"{t}\n{details}" for t in templates] + ["plain text\n{}", "{{details.nested.key}}\n" + details])
