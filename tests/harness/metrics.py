"""The service's Prometheus metrics as tests and benchmarks read them: one sample out of the exposition text."""

from __future__ import annotations

import math


def metric(text: str, name: str, **labels: str) -> float:
    """The value of the sample `name` with exactly these labels (in the order the service writes them); NaN when
    there is no such sample, so a check for 0 cannot pass on a metric that is missing."""
    label_text = ",".join(f'{key}="{value}"' for key, value in labels.items())
    sample = name + (f"{{{label_text}}}" if labels else "")
    for line in text.splitlines():
        key, _, value = line.rpartition(" ")
        if key == sample:
            return float(value)
    return math.nan
