#!/usr/bin/env python3
"""Prints a binary's settings as a Meltano `settings:` list, from its
`--about --format json`, for pasting into meltano/meltano.yml when a setting
is added (tests/tests/meltano.rs fails until the two agree).

    python3 tests/meltano/plugin-settings.py target/debug/tap-postgres-rs
"""
import json
import subprocess
import sys

about = json.loads(subprocess.check_output([sys.argv[1], "--about", "--format", "json"]))


def walk(prefix, props):
    for name, schema in props.items():
        types = schema.get("type", [])
        types = [types] if isinstance(types, str) else types
        main = next((t for t in types if t != "null"), "string")
        if main == "object" and "properties" in schema:
            yield from walk(f"{prefix}{name}.", schema["properties"])
            continue
        yield f"{prefix}{name}", main, schema


for name, kind, schema in walk("", about["settings"]["properties"]):
    print(f"    - name: {name}")
    print(f"      kind: {'options' if 'enum' in schema else kind}")
    if schema.get("secret") or schema.get("writeOnly"):
        print("      sensitive: true")
    if "default" in schema:
        print(f"      value: {json.dumps(schema['default'])}")
    print(f"      description: {json.dumps(schema.get('description', ''), ensure_ascii=False)}")
    if "enum" in schema:
        print("      options:")
        for v in schema["enum"]:
            print(f"      - {{label: {json.dumps(v)}, value: {json.dumps(v)}}}")
