"""Do the shipped LLRs move with query quality? (issue #12; research code, ``nessa eval-shift
--quality-report``): per condition, the query quality estimates (``shift_quality``) and the
rank correlation of genuine and impostor LLRs with them; pooled over conditions, the LLRs
and error rates per quality bin of the trial. The shipped scoring only; one half at a time."""
from __future__ import annotations

import numpy as np

from nessa.lab.evaluation import shift_quality as quality
from nessa.lab.evaluation.shift_methods import stored_snorm_llr


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rx, ry)[0, 1])


def quality_rows(conditions, artifact, vectors, item_quality: dict, thresholds: dict, half: str = "dev"):
    """(per-condition rows, per-bin rows) of ``half``'s trials, both paths."""
    per_condition, pooled = [], {}
    for condition in conditions:
        profile_q, query_q = quality.condition_quality(condition, vectors, item_quality)
        bins = quality.trial_bins(profile_q, query_q)
        mask = condition.half == half
        for path in ("fused", "alignment"):
            llr = stored_snorm_llr(artifact, condition, vectors, path == "fused")[mask]
            target = condition.is_target[mask]
            q = query_q[mask]
            per_condition.append({
                "condition": condition.name, "path": path, "snr_median": float(np.median(q[:, 0])),
                "hf_median": float(np.median(q[:, 1])), "seconds_median": float(np.median(q[:, 2])),
                "rho_target_snr": _spearman(q[target, 0], llr[target]),
                "rho_target_seconds": _spearman(q[target, 2], llr[target]),
                "rho_nontarget_snr": _spearman(q[~target, 0], llr[~target]),
                "rho_nontarget_seconds": _spearman(q[~target, 2], llr[~target])})
            for key in np.unique(bins[mask]):
                rec = pooled.setdefault((path, str(key)), {"target": [], "nontarget": []})
                rows = bins[mask] == key
                rec["target"].append(llr[rows & target])
                rec["nontarget"].append(llr[rows & ~target])
    return per_condition, [_bin_row(path, key, rec, thresholds[path]) for (path, key), rec in sorted(pooled.items())]


def _bin_row(path: str, key: str, rec: dict, thresholds: dict) -> dict:
    tgt, non = np.concatenate(rec["target"]), np.concatenate(rec["nontarget"])
    row = {"path": path, "bin": key, "n_target": int(len(tgt)), "n_nontarget": int(len(non)),
           "target_mean": float(np.mean(tgt)) if len(tgt) else float("nan"),
           "nontarget_mean": float(np.mean(non)) if len(non) else float("nan")}
    for name, threshold in thresholds.items():
        row[f"frr@{name}"] = 100.0 * float(np.mean(tgt < threshold)) if len(tgt) else float("nan")
        row[f"far@{name}"] = 100.0 * float(np.mean(non >= threshold)) if len(non) else float("nan")
    return row


def quality_markdown(per_condition: list[dict], per_bin: list[dict], names: list[str]) -> str:
    lines = ["| condition | path | query snr_db (median) | query hf_db | query speech s | rho(genuine LLR, snr) | "
             "rho(genuine LLR, s) | rho(impostor LLR, snr) | rho(impostor LLR, s) |", "|" + "---|" * 9]
    for r in per_condition:
        lines.append(f"| {r['condition']} | {r['path']} | {r['snr_median']:.1f} | {r['hf_median']:.1f} | "
                     f"{r['seconds_median']:.2f} | {r['rho_target_snr']:.2f} | {r['rho_target_seconds']:.2f} | "
                     f"{r['rho_nontarget_snr']:.2f} | {r['rho_nontarget_seconds']:.2f} |")
    lines += ["", "| path | bin (profile \\| query) | trials (tgt / non) | mean genuine LLR | mean impostor LLR | "
              + " | ".join(f"FAR / FRR @{n}" for n in names) + " |", "|" + "---|" * (5 + len(names))]
    for r in per_bin:
        lines.append(f"| {r['path']} | {r['bin']} | {r['n_target']} / {r['n_nontarget']} | {r['target_mean']:.2f} | "
                     f"{r['nontarget_mean']:.2f} | "
                     + " | ".join(f"{r[f'far@{n}']:.2f} / {r[f'frr@{n}']:.2f}" for n in names) + " |")
    return "\n".join(lines)
