"""Helm for the tests, through the Helm library helm-python-sdk bundles (no helm binary, no
cluster). Each command prints JSON on stdout; a Helm error exits 1 with its message on stderr.

  helm.py lint CHART VALUES.json            -> {"total_charts_linted", "messages", "errors"}
  helm.py template CHART NAME NS VALUES.json -> {"manifest": "...", "notes": "..."}
  helm.py package CHART DESTINATION          -> {"path": "..."}
"""
import json
import sys

import helm_python


def values(path):
    with open(path) as f:
        return json.load(f)


def main(argv):
    command = argv[1]
    try:
        if command == "lint":
            out = helm_python.lint(argv[2], values(argv[3]), strict=True)
        elif command == "template":
            release = helm_python.Config().install(
                argv[2], argv[3], values(argv[5]), namespace=argv[4], dry_run="client"
            )
            out = {"manifest": release["manifest"], "notes": release["notes"]}
        elif command == "package":
            out = {"path": str(helm_python.package(argv[2], destination=argv[3]))}
        else:
            raise SystemExit(f"unknown command {command}")
    except helm_python.HelmError as e:
        print(str(e), file=sys.stderr)
        return 1
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
