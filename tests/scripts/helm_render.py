#!/usr/bin/env python3
"""Lint and render a Helm chart offline with helm-python-sdk (Helm's own
library, no helm binary, no cluster) and print the result as one JSON
document on stdout:

    {"lint": {...}, "schema_error": null | "...",
     "manifests": [{"template": "shoal/templates/x.yaml", "object": {...}}, ...]}

Usage: helm_render.py CHART_DIR [VALUES_FILE] [--release NAME] [--namespace NS]

Exit codes: 0 rendered (lint findings are data, read them from "lint"),
1 rendering failed (the message is on stderr), 3 a Python module is
missing (helm_python or yaml): the caller should skip.
"""

import argparse
import json
import sys

try:
    import helm_python as helm
    import yaml
except ImportError as e:  # the caller skips with this message
    print(f"missing Python module: {e.name} (pip install helm-python-sdk pyyaml)", file=sys.stderr)
    sys.exit(3)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("chart")
    p.add_argument("values", nargs="?")
    p.add_argument("--release", default="shoal")
    p.add_argument("--namespace", default="shoal")
    a = p.parse_args()

    values = {}
    if a.values:
        with open(a.values, encoding="utf-8") as f:
            values = yaml.safe_load(f) or {}

    lint = helm.lint(a.chart, values, strict=True, namespace=a.namespace)

    out = {"lint": lint, "schema_error": None, "manifests": []}
    with helm.Chart.load(a.chart) as chart:
        try:
            chart.validate_schema(values)
        except helm.HelmError as e:  # reported, not fatal: the caller decides
            out["schema_error"] = str(e)
        try:
            rendered = chart.render(values, name=a.release, namespace=a.namespace, is_install=True)
        except helm.HelmError as e:
            print(f"render failed: {e}", file=sys.stderr)
            return 1
    for template in sorted(rendered):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt and helpers
        for obj in yaml.safe_load_all(rendered[template]):
            if obj:
                out["manifests"].append({"template": template, "object": obj})
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
