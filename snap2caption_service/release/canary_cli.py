"""``snap2caption canary analyze``: the canary verdict as an exit code a workflow branches on.

Only pydantic, httpx and PyYAML are imported (no torch, no BentoML), so a CI job can run it
after a light ``pip install``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from snap2caption_service.release.canary import (
    EXIT_HOLD,
    EXIT_NO_ANALYSIS,
    EXIT_PROMOTE,
    EXIT_ROLLBACK,
    THRESHOLDS_ENV_PREFIX,
    AnalysisError,
    CanarySettings,
    Thresholds,
    analyze,
    check_window,
    load_thresholds,
    report,
    traffic_patch,
)

EPILOG = f"""\
exit codes:
  {EXIT_PROMOTE}  promote   every check passed: shift more traffic to the candidate
  {EXIT_ROLLBACK}  rollback  a check failed: send all traffic back to the stable revision
  2  usage     bad flags or thresholds (argparse)
  {EXIT_HOLD}  hold      too few candidate requests in the window to judge: wait and ask again
  {EXIT_NO_ANALYSIS}  error     Prometheus unreachable or the query failed: no verdict

thresholds: flags > {THRESHOLDS_ENV_PREFIX}<NAME> env vars (e.g. {THRESHOLDS_ENV_PREFIX}MIN_SUCCESS_RATE)
            > --config FILE (YAML, same names) > defaults.

example:
  snap2caption canary analyze --prometheus-url http://prometheus:9090 \\
      --candidate snap2caption-00007 --stable snap2caption-00006 --window 5m \\
      --selector 'namespace="snap2caption-prod"' --config infra/observability/canary-thresholds.yaml
"""


def add_canary_parser(sub) -> None:
    env = CanarySettings()
    canary = sub.add_parser("canary", help="canary analysis against Prometheus (promote / hold / rollback)")
    canary_sub = canary.add_subparsers(dest="canary_command", required=True)
    p = canary_sub.add_parser(
        "analyze",
        help="compare a candidate revision with the stable one and answer with an exit code",
        description="Query Prometheus for the candidate's and the stable revision's request success rate, "
        "p95 latency and caption-error rate over a window, and decide promote, hold or rollback.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EPILOG,
    )
    p.add_argument(
        "--prometheus-url",
        default=env.prometheus_url,
        help="[SNAP2CAPTION_PROMETHEUS_URL, default http://127.0.0.1:9090]; a bearer token, if "
        "needed, comes from SNAP2CAPTION_PROMETHEUS_TOKEN",
    )
    p.add_argument(
        "--candidate",
        default=env.canary_candidate,
        help="candidate revision, e.g. snap2caption-00007 [SNAP2CAPTION_CANARY_CANDIDATE]",
    )
    p.add_argument(
        "--stable",
        default=env.canary_stable,
        help="stable revision to compare with; without it only absolute limits apply [SNAP2CAPTION_CANARY_STABLE]",
    )
    p.add_argument(
        "--window",
        default=env.canary_window,
        help="PromQL range to judge over [SNAP2CAPTION_CANARY_WINDOW, default 5m]",
    )
    p.add_argument(
        "--revision-label",
        default=env.canary_revision_label,
        help="the Prometheus label holding the Knative revision name "
        "[SNAP2CAPTION_CANARY_REVISION_LABEL, default revision]",
    )
    p.add_argument(
        "--selector",
        default=env.canary_selector,
        help="extra label matchers for both revisions, e.g. 'namespace=\"snap2caption-prod\"' "
        "[SNAP2CAPTION_CANARY_SELECTOR]",
    )
    p.add_argument("--config", default=env.canary_config, help="YAML file of thresholds [SNAP2CAPTION_CANARY_CONFIG]")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per Prometheus query (default 10)")
    p.add_argument("--json", action="store_true", help="print the verdict and figures as JSON")
    g = p.add_argument_group("thresholds (defaults in brackets)")
    for name, info in Thresholds.model_fields.items():
        g.add_argument(
            "--" + name.replace("_", "-"),
            type=info.annotation,
            default=None,
            help=f"{info.description} [{info.default}]",
        )
    p.set_defaults(func=cmd_canary_analyze, parser=p)

    p = canary_sub.add_parser(
        "patch",
        help="print the kubectl JSON patch that sets the Knative traffic split for one canary step",
        description='Print a JSON patch for `kubectl patch ksvc SERVICE --type json -p "$(...)"`: the stable '
        "revision keeps 100-PERCENT of the traffic (tag stable), the candidate gets PERCENT (tag "
        "candidate). --image also creates the candidate revision from that image (by digest).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  deploy at 0 %:  snap2caption canary patch --stable snap2caption-00006 --candidate "
        "snap2caption-00007 --percent 0 --image ghcr.io/acme/snap2caption@sha256:<digest>\n"
        "  a step:        ... --percent 25      roll back: ... --percent 0\n"
        "  promote:       ... --percent 100 --promote   (old stable kept at 0 % as tag previous)",
    )
    p.add_argument("--service", default="snap2caption", help="Knative Service name (default snap2caption)")
    p.add_argument("--stable", required=True, help="the revision serving today")
    p.add_argument("--candidate", required=True, help="the new revision, <service>-<suffix>")
    p.add_argument("--percent", type=int, required=True, help="candidate's share of traffic, 0-100")
    p.add_argument("--image", help="create the candidate from this image, pinned by digest")
    p.add_argument("--container", default="snap2caption", help="the container to set the image of")
    p.add_argument("--promote", action="store_true", help="at 100: candidate becomes stable")
    p.set_defaults(func=cmd_canary_patch, parser=p)


def cmd_canary_patch(args: argparse.Namespace) -> int:
    try:
        ops = traffic_patch(
            args.service,
            args.stable,
            args.candidate,
            args.percent,
            image=args.image,
            container=args.container,
            promote=args.promote,
        )
    except ValueError as exc:
        args.parser.error(str(exc))
    print(json.dumps(ops))
    return 0


def _fmt(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return {"pct": f"{value * 100:.2f}%", "s": f"{value:.3f}s", "n": f"{value:.0f}"}[kind]


def cmd_canary_analyze(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if not args.candidate:
        parser.error("--candidate (or SNAP2CAPTION_CANARY_CANDIDATE) is required")
    try:
        check_window(args.window)
        overrides = {name: getattr(args, name) for name in Thresholds.model_fields}
        thresholds = load_thresholds(args.config, overrides)
    except ValueError as exc:
        parser.error(str(exc))
    if not getattr(args, "verbose", False):
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per query drowns the verdict
    try:
        verdict, cand, stab = analyze(
            args.prometheus_url,
            args.candidate,
            args.stable,
            args.window,
            thresholds,
            revision_label=args.revision_label,
            extra_selector=args.selector,
            timeout=args.timeout,
            token=CanarySettings().prometheus_token or None,
        )
    except (AnalysisError, ValueError) as exc:
        print(f"canary analyze: no verdict: {exc}", file=sys.stderr)
        return EXIT_NO_ANALYSIS

    if args.json:
        print(json.dumps(report(verdict, cand, stab, args.window) | {"thresholds": thresholds.model_dump()}, indent=2))
        return verdict.exit_code
    print(f"canary analysis over {args.window} ({args.prometheus_url})")
    print(f"  {'revision':<28} {'requests':>9} {'success':>9} {'p95':>9} {'caption err':>12}")
    for role, s in (("candidate", cand), ("stable", stab)):
        if s is not None:
            print(
                f"  {role[0]} {s.revision:<26} {_fmt(s.requests, 'n'):>9} {_fmt(s.success_rate, 'pct'):>9} "
                f"{_fmt(s.p95_seconds, 's'):>9} {_fmt(s.caption_error_rate, 'pct'):>12}"
            )
    print(f"verdict: {verdict.action.upper()} (exit {verdict.exit_code})")
    label = {"promote": "passed", "rollback": "failed", "hold": "why"}[verdict.action]
    for reason in verdict.reasons:
        print(f"  {label}: {reason}")
    for note in verdict.notes:
        print(f"  note: {note}")
    return verdict.exit_code
