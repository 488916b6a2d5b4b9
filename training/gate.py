"""The promotion gate: does a candidate adapter replace the champion? Pure (metric dicts in,
a decision out) so the rule can be tested and reasoned about without a tracking server.

A candidate is promoted only if its primary metric (CIDEr-D by default) beats the
champion's by more than ``min_improvement`` AND no guarded metric regresses by more than its
tolerance. Both sets of metrics must come from the same evaluation set (CIDEr-D's idf is
computed from that set's references plus the config's ``eval.idf_corpus``, so numbers from
different sets do not compare); the retrain command evaluates candidate and champion side by
side in one run for that reason.

The rule is the ``registration_rule`` section of a training config, e.g.::

    registration_rule:
      primary_metric: cider_d
      min_improvement: 0.05        # absolute; the candidate needs cider_d > champion + 0.05
      guarded:                     # metric: largest allowed regression (absolute)
        bleu4: 0.01
        hashtag_f1: 0.02
        alt_text_lint_pass: 0.01   # share of alt texts passing core/alt_text.py's lint
        caption_words_mean: 3.0
      lower_is_better: [caption_words_mean]

Every metric is higher-is-better unless listed in ``lower_is_better``: scores and rates such
as ``alt_text_lint_pass`` need no entry.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field

DEFAULT_PRIMARY = "cider_d"
# Float noise (1.05 - 1.0 = 0.05000000000000004) must not decide a promotion: differences
# this small count as equal.
_EPS = 1e-9
_RULE_KEYS = {"primary_metric", "min_improvement", "guarded", "lower_is_better"}


@dataclass(frozen=True)
class GateRule:
    primary_metric: str = DEFAULT_PRIMARY
    # Absolute margin on the primary metric. 0.0 still requires a strict improvement.
    min_improvement: float = 0.0
    # metric name -> largest allowed regression (absolute, >= 0).
    guarded: Mapping[str, float] = field(default_factory=dict)
    # Metrics where a smaller value is better (e.g. a length target); all others: higher.
    lower_is_better: frozenset[str] = frozenset()

    def __post_init__(self):
        if not isinstance(self.primary_metric, str) or not self.primary_metric:
            raise ValueError("registration_rule.primary_metric must be a non-empty metric name")
        if not _is_number(self.min_improvement):
            raise ValueError(f"registration_rule.min_improvement must be a finite number, got {self.min_improvement!r}")
        if not isinstance(self.guarded, Mapping):
            raise ValueError("registration_rule.guarded must be a mapping of metric name -> allowed regression")
        for name, tolerance in self.guarded.items():
            if not _is_number(tolerance) or tolerance < 0:
                raise ValueError(
                    f"registration_rule.guarded.{name} must be a finite number >= 0 "
                    f"(the largest allowed regression), got {tolerance!r}"
                )
        object.__setattr__(self, "min_improvement", float(self.min_improvement))
        object.__setattr__(self, "guarded", {str(k): float(v) for k, v in self.guarded.items()})
        object.__setattr__(self, "lower_is_better", frozenset(self.lower_is_better))

    @classmethod
    def from_dict(cls, section: Mapping | None) -> GateRule:
        """From the config's ``registration_rule`` section (None or {} -> the defaults)."""
        if section is None:
            return cls()
        if not isinstance(section, Mapping):
            raise ValueError(f"registration_rule must be a mapping, got {type(section).__name__}")
        unknown = set(section) - _RULE_KEYS
        if unknown:
            raise ValueError(f"registration_rule has unknown keys {sorted(unknown)}; allowed: {sorted(_RULE_KEYS)}")
        lower = section.get("lower_is_better") or []
        if isinstance(lower, str) or not all(isinstance(m, str) for m in lower):
            raise ValueError("registration_rule.lower_is_better must be a list of metric names")
        return cls(
            primary_metric=section.get("primary_metric", DEFAULT_PRIMARY),
            min_improvement=section.get("min_improvement", 0.0),
            guarded=section.get("guarded") or {},
            lower_is_better=frozenset(lower),
        )

    def to_dict(self) -> dict:
        return {
            "primary_metric": self.primary_metric,
            "min_improvement": self.min_improvement,
            "guarded": dict(self.guarded),
            "lower_is_better": sorted(self.lower_is_better),
        }

    def gain(self, metric: str, candidate: float, champion: float) -> float:
        """How much better the candidate is (negative: worse), whatever the metric's direction."""
        return champion - candidate if metric in self.lower_is_better else candidate - champion


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    # What was compared, for tags and logs: metric -> (candidate, champion or None).
    compared: Mapping[str, tuple[float, float | None]] = field(default_factory=dict)


def decide(candidate: Mapping[str, float], champion: Mapping[str, float] | None, rule: GateRule) -> GateDecision:
    """Promote or hold, with a one-line human reason (it becomes the version's gate_reason tag).

    Raises ValueError when a metric the rule names is missing: a typo in the config or an
    incomplete evaluation must fail the retrain loudly, not slip a candidate through.
    """
    needed = [rule.primary_metric, *rule.guarded]
    _require(candidate, needed, "candidate")
    bad = [m for m in needed if not _is_number(candidate[m])]
    compared = {m: (candidate[m], None if champion is None else champion.get(m)) for m in needed}
    if bad:
        return GateDecision(
            False,
            f"candidate metric(s) {', '.join(bad)} not a finite number: "
            f"{', '.join(f'{m}={candidate[m]!r}' for m in bad)}",
            compared,
        )
    if champion is None:
        return GateDecision(
            True,
            f"first version: no champion yet ({rule.primary_metric} {candidate[rule.primary_metric]:.4f})",
            compared,
        )
    _require(champion, needed, "champion")
    bad = [m for m in needed if not _is_number(champion[m])]
    if bad:
        return GateDecision(
            False, f"champion metric(s) {', '.join(bad)} not a finite number; cannot compare, champion kept", compared
        )

    primary = rule.primary_metric
    gain = rule.gain(primary, candidate[primary], champion[primary])
    line = (
        f"{primary} {candidate[primary]:.4f} vs champion {champion[primary]:.4f} "
        f"({gain:+.4f}, needs > {rule.min_improvement:+.4f})"
    )
    failures = [] if gain - rule.min_improvement > _EPS else [f"{line}: not enough improvement"]
    regressions = []
    for metric, tolerance in rule.guarded.items():
        drop = -rule.gain(metric, candidate[metric], champion[metric])
        if drop - tolerance > _EPS:
            regressions.append(
                f"guarded {metric} regressed by {drop:.4f} ({champion[metric]:.4f} -> "
                f"{candidate[metric]:.4f}), tolerance {tolerance:.4f}"
            )
    failures += regressions
    if failures:
        return GateDecision(False, "; ".join(failures), compared)
    guards = f"; guarded metrics within tolerance ({', '.join(rule.guarded)})" if rule.guarded else ""
    return GateDecision(True, line + guards, compared)


def _require(metrics: Mapping[str, float], names: list[str], whose: str) -> None:
    if not isinstance(metrics, Mapping):
        raise ValueError(f"{whose} metrics must be a mapping of name -> value, got {type(metrics).__name__}")
    missing = [m for m in names if m not in metrics]
    if missing:
        raise ValueError(f"{whose} metrics lack {missing} (named by the registration rule); have {sorted(metrics)}")


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
