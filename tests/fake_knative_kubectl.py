"""A stand-in for `kubectl` against a cluster running Knative, for running the canary workflow's
steps here (there is no cluster). Only what the workflow calls is understood:

  kubectl -n NS get ksvc NAME -o name | -o json | -o jsonpath=...
  kubectl -n NS patch ksvc NAME --type json -p PATCH   -> applied by the REAL kubectl
                                                          (`kubectl patch --local`) to a file
  kubectl -n NS wait ...                               -> ready at once

The Knative Service lives in FAKE_KSVC_STATE (JSON). Like Knative's controller, `get` reports
status.traffic from spec.traffic (or 100 % to FAKE_INITIAL_REVISION before any traffic block),
with a URL per tag from FAKE_TAG_URLS (JSON {tag: url}). Every call is appended to FAKE_KUBECTL_LOG.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def status_traffic(ksvc: dict) -> list[dict]:
    urls = json.loads(os.environ.get("FAKE_TAG_URLS", "{}"))
    spec = ksvc["spec"].get("traffic")
    if not spec:
        return [{"revisionName": os.environ["FAKE_INITIAL_REVISION"], "percent": 100, "latestRevision": True}]
    out = []
    for t in spec:
        entry = {"revisionName": t["revisionName"], "percent": t.get("percent", 0), "latestRevision": False}
        if t.get("tag"):
            entry.update(tag=t["tag"], url=urls.get(t["tag"], f"http://{t['tag']}-snap2caption.example"))
        out.append(entry)
    return out


def main(argv: list[str]) -> int:
    state = os.environ["FAKE_KSVC_STATE"]
    with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
        log.write(json.dumps(argv) + "\n")
    args = list(argv)
    if "-n" in args:
        i = args.index("-n")
        del args[i : i + 2]
    verb = args[0]
    if verb == "wait":
        return 0
    kind, name = args[1], args[2]
    with open(state) as f:
        ksvc = json.load(f)
    if kind != "ksvc" or name != ksvc["metadata"]["name"]:
        print(f'Error from server (NotFound): {kind} "{name}" not found', file=sys.stderr)
        return 1
    if verb == "get":
        output = args[args.index("-o") + 1]
        if output == "name":
            print(f"service.serving.knative.dev/{name}")
        elif output == "json":
            print(json.dumps({**ksvc, "status": {"traffic": status_traffic(ksvc)}}))
        else:
            print(json.dumps(status_traffic(ksvc)))
        return 0
    if verb == "patch":
        assert args[args.index("--type") + 1] == "json", args
        patch = args[args.index("-p") + 1]
        r = subprocess.run(
            [os.environ["REAL_KUBECTL"], "patch", "-f", state, "--local", "--type", "json", "-p", patch, "-o", "json"],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            print(r.stderr, file=sys.stderr, end="")
            return r.returncode
        with open(state, "w") as f:
            f.write(r.stdout)
        print(f"service.serving.knative.dev/{name} patched")
        return 0
    print(f"fake kubectl: unsupported: {argv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
