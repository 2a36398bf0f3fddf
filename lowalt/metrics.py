"""A small Prometheus text-format registry: counters, gauges and latency histograms."""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    body = ",".join(
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in labels
    )
    return "{" + body + "}"


def _number(value: float) -> str:
    """A sample value, exact: an integral value as an integer (a counter past a million would
    move in steps otherwise: `:g` keeps six digits), any other as its shortest repr; NaN and
    infinities as the text format spells them."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


class Metrics:
    LATENCY_BUCKETS_S = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)

    def __init__(self) -> None:
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._help: dict[str, tuple[str, str]] = {}
        self._gauges: dict[str, Callable[[], float]] = {}
        self._hist: dict[str, tuple[list[int], list[float]]] = {}

    def counter(self, name: str, help_text: str) -> None:
        self._help[name] = ("counter", help_text)
        self._counters.setdefault(name, {})

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        series = self._counters[name]
        key = tuple(sorted(labels.items()))
        series[key] = series.get(key, 0.0) + amount

    def value(self, name: str, **labels: str) -> float:
        return self._counters[name].get(tuple(sorted(labels.items())), 0.0)

    def gauge(self, name: str, help_text: str, read: Callable[[], float]) -> None:
        self._help[name] = ("gauge", help_text)
        self._gauges[name] = read

    def histogram(self, name: str, help_text: str) -> None:
        self._help[name] = ("histogram", help_text)
        self._hist[name] = ([0] * (len(self.LATENCY_BUCKETS_S) + 1), [0.0, 0.0])

    def observe(self, name: str, seconds: float) -> None:
        counts, totals = self._hist[name]
        counts[bisect.bisect_left(self.LATENCY_BUCKETS_S, seconds)] += 1
        totals[0] += seconds
        totals[1] += 1

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text) in sorted(self._help.items()):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            if kind == "counter":
                series = self._counters[name] or {(): 0.0}
                for key, val in sorted(series.items()):
                    lines.append(f"{name}{_labels(key)} {_number(val)}")
            elif kind == "gauge":
                lines.append(f"{name} {_number(float(self._gauges[name]()))}")
            else:
                counts, (total, count) = self._hist[name]
                cumulative = 0
                for bound, n in zip(self.LATENCY_BUCKETS_S, counts, strict=False):
                    cumulative += n
                    lines.append(f'{name}_bucket{{le="{bound:g}"}} {cumulative}')
                lines.append(f'{name}_bucket{{le="+Inf"}} {int(count)}')
                lines.append(f"{name}_sum {_number(total)}")
                lines.append(f"{name}_count {int(count)}")
        return "\n".join(lines) + "\n"
