#!/usr/bin/env python3
"""Checks recorded HTTP responses against proto/openapi.yaml.

usage: openapi_check.py SPEC RECORDS
RECORDS holds one line per response: METHOD PATH STATUS BODYFILE (written by
tests/serve_lib.sh's req). Each response must match an operation of the spec
(path template, method), its status must be documented (or 'default'), and a
JSON body must validate against the documented schema: type, nullable,
required, properties, additionalProperties, items, enum, oneOf, minItems,
maxItems, minLength, maxLength, minimum, maximum and $ref. Prints what does
not match and "N responses checked against the spec"; exit 1 on any mismatch.
"""
import json
import re
import sys

import yaml


def resolve(spec, node):
    while isinstance(node, dict) and "$ref" in node:
        path = node["$ref"].lstrip("#/").split("/")
        node = spec
        for p in path:
            node = node[p]
    return node


TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}


def check(spec, schema, v, where, errs):
    schema = resolve(spec, schema)
    if v is None:
        if not schema.get("nullable") and schema.get("type") not in (None, "null"):
            errs.append(f"{where}: null where {schema.get('type')} is wanted")
        return
    if "oneOf" in schema:
        n = 0
        for alt in schema["oneOf"]:
            e = []
            check(spec, alt, v, where, e)
            n += not e
        if n != 1:
            errs.append(f"{where}: matches {n} of the oneOf alternatives")
        return
    t = schema.get("type")
    if t == "integer":
        ok = isinstance(v, int) and not isinstance(v, bool)
    elif t == "number":
        ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    elif t in TYPES:
        ok = isinstance(v, TYPES[t]) and (t == "boolean" or not isinstance(v, bool))
    else:
        ok = True
    if not ok:
        errs.append(f"{where}: {type(v).__name__} where {t} is wanted")
        return
    if "enum" in schema and v not in schema["enum"]:
        errs.append(f"{where}: {v!r} is not one of {schema['enum']}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in schema and v < schema["minimum"]:
            errs.append(f"{where}: {v} < minimum {schema['minimum']}")
        if "maximum" in schema and v > schema["maximum"]:
            errs.append(f"{where}: {v} > maximum {schema['maximum']}")
    if isinstance(v, str):
        if len(v) < schema.get("minLength", 0) or len(v) > schema.get("maxLength", 1 << 62):
            errs.append(f"{where}: string length {len(v)} out of bounds")
    if isinstance(v, list):
        if len(v) < schema.get("minItems", 0) or len(v) > schema.get("maxItems", 1 << 62):
            errs.append(f"{where}: {len(v)} items out of bounds")
        if "items" in schema:
            for i, x in enumerate(v):
                check(spec, schema["items"], x, f"{where}[{i}]", errs)
    if isinstance(v, dict):
        props = schema.get("properties", {})
        for r in schema.get("required", []):
            if r not in v:
                errs.append(f"{where}: lacks required '{r}'")
        extra = schema.get("additionalProperties", True)
        for k, x in v.items():
            if k in props:
                check(spec, props[k], x, f"{where}.{k}", errs)
            elif extra is False:
                errs.append(f"{where}: '{k}' is not in the spec")
            elif isinstance(extra, dict):
                check(spec, extra, x, f"{where}.{k}", errs)


def operation(spec, method, path):
    path = path.split("?", 1)[0]
    for tmpl, item in spec["paths"].items():
        rx = "^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(tmpl)) + "$"
        if re.match(rx, path) and method.lower() in item:
            return item[method.lower()]
    return None


def main():
    spec = yaml.safe_load(open(sys.argv[1]))
    bad = n = 0
    for line in open(sys.argv[2]):
        method, path, status, body = line.split()
        op = operation(spec, method, path)
        if op is None:
            continue  # unknown routes and methods: their 404/405 are checked by the tests
        n += 1
        resps = op.get("responses", {})
        r = resps.get(status) or resps.get("default")
        if r is None:
            print(f"{method} {path}: status {status} is not documented", file=sys.stderr)
            bad += 1
            continue
        r = resolve(spec, r)
        content = r.get("content", {})
        if "application/json" not in content:
            continue
        try:
            v = json.load(open(body))
        except ValueError as e:
            print(f"{method} {path} {status}: the body is not JSON: {e}", file=sys.stderr)
            bad += 1
            continue
        errs = []
        check(spec, content["application/json"].get("schema", {}), v, "body", errs)
        if errs:
            bad += 1
            print(f"{method} {path} {status}: " + "; ".join(errs[:5]), file=sys.stderr)
    print(f"{n} responses checked against the spec, {bad} do not match")
    sys.exit(1 if bad else 0)


main()
