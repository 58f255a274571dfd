"""The result of a run: its rows, the markdown tables, JSON and DET curves."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import numpy as np

from nessa.lab.evaluation.protocols import DEFAULT_ENROLL_UTTERANCES, MIN_GAIN_GAP_POINTS, P_TARGET

ROW_KEYS = ("system", "condition", "protocol", "eer", "min_dcf", "eer_sd", "top1", "gain_recovered",
            "n_target", "n_nontarget")


def _fmt(value, digits=2) -> str:
    return "–" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


def _eer_cell(row: dict) -> str:
    sd = f" ± {row['eer_sd']:.2f}" if row["eer_sd"] is not None else ""
    return f"{_fmt(row['eer'])}{sd} ({_fmt(row['min_dcf'], 3)})"


def _top1_cell(row: dict) -> str:
    at = f" ({_fmt(row['top1_at_threshold'], 1)})" if row["top1_at_threshold"] is not None else ""
    return f"{_fmt(row['top1'], 1)}{at}"


@dataclasses.dataclass
class EvaluationResult:
    rows: list[dict]
    systems: list[str]
    conditions: list[str]
    protocols: list[str]
    trials: dict  # (system, condition, protocol) -> Trials
    info: dict = dataclasses.field(default_factory=dict)

    def row(self, system: str, condition: str, protocol: str) -> dict:
        for row in self.rows:
            if (row["system"], row["condition"], row["protocol"]) == (system, condition, protocol):
                return row
        raise KeyError((system, condition, protocol))

    def markdown(self) -> str:
        lines = []
        titles = {"all_pairs": "All pairs (enrollment utterance full & clean vs. every other test utterance)",
                  "profile": f"Profiles ({self.info.get('n_enroll', DEFAULT_ENROLL_UTTERANCES)} utterances each), "
                             f"mean ± sd over {self.info.get('draws', '?')} draws"}
        header = "| system | " + " | ".join(self.conditions) + " |"
        rule = "|---|" + "---|" * len(self.conditions)
        for protocol in self.protocols:
            first = self.row(self.systems[0], self.conditions[0], protocol)
            lines += [f"### {titles.get(protocol, protocol)}", "",
                      f"EER % (minDCF at p_target {P_TARGET:g}, normalised); "
                      f"{first['n_target']} target / {first['n_nontarget']} non-target trials"
                      + (" per draw" if protocol == "profile" else "") + " per condition.", "", header, rule]
            lines += self._system_rows(protocol, _eer_cell)
            lines += [f"Fraction of the runtime→enrollment EER gap recovered ({protocol}; "
                      f"shown where the gap ≥ {MIN_GAIN_GAP_POINTS:g} points):", "", header, rule]
            lines += self._system_rows(protocol, lambda r: _fmt(r["gain_recovered"]))
            if protocol == "profile":
                lines += ["Top-1 identification % among all profiles (at the system's own threshold, "
                          "where it has one):", "", header, rule]
                lines += self._system_rows(protocol, _top1_cell)
        return "\n".join(lines)

    def _system_rows(self, protocol: str, cell) -> list[str]:
        """One markdown row per system, `cell(row)` for each condition, then a blank line."""
        return [f"| {system} | " + " | ".join(cell(self.row(system, condition, protocol))
                                              for condition in self.conditions) + " |"
                for system in self.systems] + [""]

    def save_json(self, path: str | os.PathLike) -> None:
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.rows, indent=1) + "\n", encoding="utf-8")

    def plot_det(self, path: str | os.PathLike, protocol: str = "all_pairs") -> None:
        """DET curves (probit axes), one subplot per condition, one curve per system."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from scipy.stats import norm

        ticks = np.array([0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40])
        lim = norm.ppf([0.0005, 0.5])
        figure, axes = plt.subplots(1, len(self.conditions), figsize=(5.2 * len(self.conditions), 5.2), squeeze=False)
        for axis, condition in zip(axes[0], self.conditions):
            for index, system in enumerate(self.systems):
                trials = self.trials[(system, condition, protocol)]
                if trials is None:
                    continue
                targets, nontargets = np.concatenate(trials.targets), np.concatenate(trials.nontargets)
                far, frr = det_points(targets, nontargets)
                eps = 1e-4
                # an artifact's cross score often retraces the in-run map of its kind: dash it
                style = (0, (4, 2)) if index >= 5 and not system.endswith("+fused") else "-"
                axis.plot(norm.ppf(np.clip(far, eps, 1 - eps)), norm.ppf(np.clip(frr, eps, 1 - eps)),
                          label=f"{system} ({self.row(system, condition, protocol)['eer']:.1f}%)", linewidth=1.3,
                          linestyle=style)
            axis.set_xticks(norm.ppf(ticks / 100))
            axis.set_xticklabels([f"{t:g}" for t in ticks])
            axis.set_yticks(norm.ppf(ticks / 100))
            axis.set_yticklabels([f"{t:g}" for t in ticks])
            axis.set_xlim(*lim)
            axis.set_ylim(*lim)
            axis.plot(lim, lim, color="grey", linewidth=0.5, linestyle=":")
            axis.set_title(f"{condition} ({protocol})")
            axis.set_xlabel("false accept rate (%)")
            axis.set_ylabel("false reject rate (%)")
            axis.grid(True, linewidth=0.3)
            axis.legend(fontsize=7, loc="upper right", framealpha=0.85)
        figure.tight_layout()
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110, metadata={"Software": None})
        plt.close(figure)


def det_points(targets: np.ndarray, nontargets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FAR, FRR) at every distinct score as threshold (accept when score > threshold), plus the ends."""
    thresholds = np.unique(np.concatenate([targets, nontargets]))
    thresholds = np.concatenate([[-np.inf], thresholds])
    frr = np.searchsorted(np.sort(targets), thresholds, side="right") / len(targets)
    far = 1.0 - np.searchsorted(np.sort(nontargets), thresholds, side="right") / len(nontargets)
    return far, frr
