"""The value against its threshold, as the inbox shows it, from real explanation texts."""

from __future__ import annotations

import pytest

from console.queries import comparison


@pytest.mark.parametrize(("detail", "shown"), [
    ("mean of 14 systolic_bp readings in the 7d up to this reading 144 mm[Hg] >= 130 mm[Hg] (default 130, no usable "
     "active goal for systolic_bp (high bound)).", "144 mm[Hg] ≥ 130 mm[Hg]"),
    ("body_weight first to last reading since the start of the day 1 day(s) earlier (patient's time zone) up to this "
     "reading: 1.72 kg (82.87 kg to 84.59 kg) >= 0.91 kg (rule value 2 [lb_av]).", "1.72 kg ≥ 0.91 kg"),
    ("spo2 87 % < 88 % (default 88, no usable active goal for spo2 (low bound)).", "87 % < 88 %"),
    ("glucose 50 mg/dL < 70 mg/dL (rule value 70 mg/dL). Severity raised to high: glucose 50 mg/dL < 54 mg/dL "
     "(rule value 54 mg/dL).", "50 mg/dL < 70 mg/dL; 50 mg/dL < 54 mg/dL"),
    ("no readings for 3 days", ""),
])
def test_comparison(detail: str, shown: str) -> None:
    assert comparison(detail) == shown
