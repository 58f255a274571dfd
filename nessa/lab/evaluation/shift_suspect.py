"""The suspect-claim rule of the domain-shift evaluation (issue #12; research code, opt-in through
``nessa eval-shift --methods suspect-...``; the service does not use it).

verify scores the query against the claimed profile only. The gallery holds every other
enrolled speaker too: a claim is *suspect* when the audio matches another enrolled profile
better than the claimed one, and a suspect claim is rejected whatever its own LLR.

Rules (method names; ``<set>`` is ``closed`` or ``open``):

* ``suspect-<set>-m<margin>``: reject when ``max LLR over the gallery's other profiles >=
  claimed LLR + margin`` (margin in LLR units, may be negative: ``m-1`` also rejects a claim
  another profile scores within 1 of);
* ``suspect-<set>-t``: reject when another profile's LLR reaches the operating threshold
  itself (the audio would also be accepted as someone else), at each threshold reported.

``closed``: every other profile of the claimed profile's gallery competes, the impostor's
own profile included where it is enrolled (test-other: always; Speech Commands: when the
impostor has a profile). ``open``: the profiles of the query's own speaker are left out, so
an impostor is never enrolled (what is left is the chance that a third speaker scores
higher). Genuine claims are the same under both (a gallery holds one profile per speaker).

Only numpy here: the caller (``shift_methods``) scores the queries against every profile.
"""
from __future__ import annotations

import re

import numpy as np

from nessa import metrics

_RULE = re.compile(r"^suspect-(closed|open)-(?:m(-?\d+(?:\.\d+)?)|(t))$")
#: margins tried on dev (``nessa eval-shift --methods`` accepts any margin in the name)
DEV_MARGINS = (-2.0, -1.0, 0.0, 1.0, 2.0, 4.0)


def parse_rule(method: str) -> tuple[bool, float | None] | None:
    """(closed set?, margin; None = the at-threshold rule) of a ``suspect-...`` name, or None."""
    match = _RULE.match(method)
    if not match:
        return None
    return match.group(1) == "closed", None if match.group(3) else float(match.group(2))


def rule_names() -> list[str]:
    """The rule names tried on dev, in order."""
    return [f"suspect-{kind}-{r}" for kind in ("closed", "open")
            for r in [f"m{m:g}" for m in DEV_MARGINS] + ["t"]]


def other_max(llr_full: np.ndarray, trials: np.ndarray, galleries: np.ndarray, profile_speakers: np.ndarray,
              test_speakers: np.ndarray, closed: bool) -> np.ndarray:
    """(n_trials,) the best LLR of each trial's query over the claimed profile's gallery, the
    claimed profile left out (and, ``closed=False``, every profile of the query's own speaker);
    -inf where nothing competes. ``llr_full``: (tests, profiles) LLRs of every query against
    every profile."""
    tests, claimed = trials[:, 0], trials[:, 1]
    compete = galleries[None, :] == galleries[claimed][:, None]
    compete[np.arange(len(trials)), claimed] = False
    if not closed:
        compete &= profile_speakers[None, :] != test_speakers[tests][:, None]
    return np.where(compete, llr_full[tests], -np.inf).max(axis=1)


def own_enrolled(trials: np.ndarray, galleries: np.ndarray, profile_speakers: np.ndarray,
                 test_speakers: np.ndarray) -> np.ndarray:
    """(n_trials,) whether the query's own speaker has a profile in the claimed gallery."""
    same_gallery = galleries[None, :] == galleries[trials[:, 1]][:, None]
    own = profile_speakers[None, :] == test_speakers[trials[:, 0]][:, None]
    return (same_gallery & own).any(axis=1)


def suspect(llr: np.ndarray, other: np.ndarray, margin: float | None, threshold: float) -> np.ndarray:
    """Which claims the rule flags at ``threshold`` (margin None: another profile reaches it)."""
    if margin is None:
        return other >= threshold
    return other >= llr + margin


def suspect_figures(llr: np.ndarray, other: np.ndarray, is_target: np.ndarray, thresholds: dict,
                    margin: float | None) -> dict:
    """EER (margin rules: of the LLR with suspect claims at -inf; the at-threshold rule has
    none), and per threshold: FAR / FRR (%) with the rule (accept = llr >= threshold and not
    suspect), false accepts, the genuine claims rejected only because of the rule (%) and the
    impostor claims it stopped (%)."""
    targets, nontargets = is_target, ~is_target
    row = {"n_target": int(targets.sum()), "n_nontarget": int(nontargets.sum()), "eer": float("nan")}
    if margin is not None and targets.any() and nontargets.any():
        effective = np.where(other >= llr + margin, -np.inf, llr)
        finite = np.where(np.isfinite(effective), effective, np.min(llr) - 1e3)
        row["eer"] = 100.0 * metrics.equal_error_rate(finite[targets], finite[nontargets])[0]
    for name, threshold in thresholds.items():
        passed = llr >= threshold
        flagged = passed & suspect(llr, other, margin, threshold)
        accept = passed & ~flagged
        row[f"far@{name}"] = _pct(accept[nontargets])
        row[f"frr@{name}"] = _pct(~accept[targets])
        row[f"fa@{name}"] = int(accept[nontargets].sum())
        row[f"suspect_frr@{name}"] = _pct(flagged[targets])
        row[f"stopped@{name}"] = _pct(flagged[nontargets])
    return row


def _pct(mask: np.ndarray) -> float:
    return 100.0 * float(np.mean(mask)) if len(mask) else float("nan")


def suspect_markdown(rows: list[dict], thresholds: dict) -> str:
    """The suspect rows: FAR / FRR with the rule, genuine claims it rejected, impostors it stopped."""
    names = list(thresholds)
    header = ["condition", "path", "method", "half", "EER"] + [
        f"FAR / FRR @{n} (genuine flagged / impostors stopped)" for n in names] + ["trials (tgt / non; own enrolled)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        if "suspect_frr@" + names[0] not in r:
            continue
        cells = [r["condition"], r["path"], r["method"], r["half"], f"{r['eer']:.2f}"]
        cells += [f"{r[f'far@{n}']:.2f} / {r[f'frr@{n}']:.2f} ({r[f'suspect_frr@{n}']:.2f} / "
                  f"{r[f'stopped@{n}']:.2f})" for n in names]
        cells.append(f"{r['n_target']} / {r['n_nontarget']}; {r.get('own_enrolled', '-')}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", "Rates in %; genuine flagged = genuine claims over the threshold that the rule "
                                  "rejected, impostors stopped = impostor claims over the threshold it rejected; "
                                  "own enrolled = impostor trials whose speaker has a profile in the gallery."])
