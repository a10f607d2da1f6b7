"""Blood pressure categories by the ACC/AHA 2017 adult table; the higher category of the two numbers wins.

Implausible input is refused (``ImplausibleReading``) rather than classified."""

from __future__ import annotations

CATEGORIES = ("normal", "elevated", "hypertension_stage_1", "hypertension_stage_2", "hypertensive_crisis")
SYSTOLIC_RANGE = (40, 300)
DIASTOLIC_RANGE = (20, 200)
PULSE_RANGE = (20, 250)


class ImplausibleReading(ValueError):
    """The numbers cannot be a real blood pressure measurement; ``field`` names the offending one."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


def bp_validate(systolic: float, diastolic: float, pulse: float | None = None) -> None:
    for field, value, (lo, hi) in (("systolic", systolic, SYSTOLIC_RANGE), ("diastolic", diastolic, DIASTOLIC_RANGE),
                                   ("pulse", pulse, PULSE_RANGE)):
        if value is not None and not lo <= value <= hi:
            raise ImplausibleReading(field, f"{field} {value:g} is outside the plausible range {lo} to {hi}")
    if systolic <= diastolic:
        raise ImplausibleReading("systolic", f"systolic {systolic:g} must be above diastolic {diastolic:g}")


def _systolic_rank(systolic: float) -> int:
    if systolic > 180:
        return 4
    if systolic >= 140:
        return 3
    if systolic >= 130:
        return 2
    return 1 if systolic >= 120 else 0


def _diastolic_rank(diastolic: float) -> int:
    if diastolic > 120:
        return 4
    if diastolic >= 90:
        return 3
    return 2 if diastolic >= 80 else 0  # diastolic has no "elevated" band


def bp_classify(systolic: float, diastolic: float, pulse: float | None = None) -> str:
    """The category name; raises ``ImplausibleReading`` for impossible numbers."""
    bp_validate(systolic, diastolic, pulse)
    return CATEGORIES[max(_systolic_rank(systolic), _diastolic_rank(diastolic))]


def bp_in_range(systolic: float, diastolic: float) -> bool:
    """Within the target used for "time in range": normal or elevated, and not hypotensive (systolic ≥ 90)."""
    return 90 <= systolic < 130 and diastolic < 80
