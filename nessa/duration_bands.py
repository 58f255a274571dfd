"""The calibrations an artifact scores with, chosen by the query's speech duration.

An artifact's ``scoring["duration_bands"]`` (optional) lists per-duration (fused, cross)
calibrations, the last band open-ended; without bands, ``scoring["fused"]`` /
``scoring["cross"]`` apply, and without those the plain ``fusion`` / ``calibration``.
"""
from __future__ import annotations

import numpy as np

from nessa.calibration import LogisticCalibration


class DurationBands:
    def __init__(self, scoring: dict, fusion: dict, calibration: dict):
        self._scoring, self._fusion, self._calibration = scoring, fusion, calibration
        self._bands = scoring.get("duration_bands") or []
        self._parsed: dict = {}
        self._needed: dict = {}

    def band_of(self, seconds: float | None) -> int | None:
        """The band of a query of ``seconds`` (None: no bands, or no duration known)."""
        if not self._bands or seconds is None:
            return None
        for index, band in enumerate(self._bands):
            if band["max_seconds"] is None or seconds < band["max_seconds"]:
                return index
        return len(self._bands) - 1

    def queries_by_band(self, seconds, n: int) -> dict:
        """band -> row indices of the ``n`` queries in it ({None: None}: every query, no bands)."""
        if seconds is None or not self._bands:
            return {None: None}
        durations = np.broadcast_to(np.asarray(seconds, dtype=np.float64), (n,))
        groups: dict = {}
        for row, value in enumerate(durations):
            groups.setdefault(self.band_of(None if np.isnan(value) else float(value)), []).append(row)
        return groups

    def calibrations(self, band: int | None) -> tuple[LogisticCalibration, LogisticCalibration]:
        """(fused, cross) calibrations of ``band`` (None: the pooled ones), parsed once."""
        if band not in self._parsed:
            self._parsed[band] = self._parse(band)
        return self._parsed[band]

    def _parse(self, band: int | None) -> tuple[LogisticCalibration, LogisticCalibration]:
        if band is not None:
            entry = self._bands[band]
            return LogisticCalibration.from_dict(entry["fused"]), LogisticCalibration.from_dict(entry["cross"])
        return self.pooled(fused=True), self.pooled(fused=False)

    def pooled(self, fused: bool) -> LogisticCalibration:
        """The fused or cross-model calibration for every duration (thresholds come from it)."""
        if "fused" in self._scoring:
            return LogisticCalibration.from_dict(self._scoring["fused" if fused else "cross"])
        return LogisticCalibration.from_dict(self._fusion if fused else self._calibration)

    def features_needed(self, fused: np.ndarray) -> frozenset:
        """The features the calibrations in play read (fused ones if any profile is fused,
        the cross-model ones if any is not), over every band."""
        key = (bool(fused.any()), bool(fused.all()))
        if key not in self._needed:
            names: set[str] = set()
            for band in [None] + list(range(len(self._bands))):
                fused_cal, cross_cal = self.calibrations(band)
                names |= set(fused_cal.features) if key[0] else set()
                names |= set() if key[1] else set(cross_cal.features)
            self._needed[key] = frozenset(names)
        return self._needed[key]
