"""Prometheus' text exposition format, read: the samples of a ``/metrics`` answer, and the
arithmetic Prometheus does on them (a counter's increase across a restart, a quantile from
histogram buckets), for labctl's own readers (``labctl top``, ``status``, a drain's count
of requests in flight) that ask a server directly, with no Prometheus in between.

Only the families a caller names are parsed: a LiteLLM gateway's answer runs to hundreds of
kilobytes, of which ``top`` needs a few dozen lines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

Labels = dict[str, str]
#: Sample name -> its series: (labels, value).
Samples = dict[str, list[tuple[Labels, float]]]

# One label pair: name="value", the value with \\, \" and \n escaped (the format's only escapes).
_LABEL = re.compile(r'\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = re.compile(r"\\(.)")


def _unescape(value: str) -> str:
    return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value) if "\\" in value else value


def parse(text: str, names: Iterable[str]) -> Samples:
    """The series of the sample names in ``names`` (``llamacpp:requests_processing``,
    ``vllm:time_to_first_token_seconds_bucket``...) found in ``text``; a name absent there
    is absent from the result. Comments, other families and lines that are not a sample
    (a torn answer's last line) are skipped, never an error. A timestamp after the value is
    ignored."""
    wanted = set(names)
    out: Samples = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        brace = line.find("{")
        space = line.find(" ")
        if brace != -1 and (space == -1 or brace < space):
            name = line[:brace]
            if name not in wanted:
                continue
            end = line.rfind("}")
            if end < brace:
                continue
            labels = {m.group(1): _unescape(m.group(2)) for m in _LABEL.finditer(line, brace + 1, end)}
            rest = line[end + 1:].split()
        else:
            name = line[:space] if space != -1 else line
            if name not in wanted:
                continue
            labels = {}
            rest = line[space:].split() if space != -1 else []
        if not rest:
            continue
        try:
            value = float(rest[0])
        except ValueError:
            continue
        out.setdefault(name, []).append((labels, value))
    return out


def total(samples: Samples, name: str, where: Mapping[str, str] | None = None) -> float | None:
    """The sum of ``name``'s series (those whose labels include ``where``), or None when
    the answer had none: "not exposed" is not zero."""
    series = samples.get(name)
    if series is None:
        return None
    return sum(v for labels, v in series if not where or all(labels.get(k) == w for k, w in where.items()))


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    """``name``'s series summed per value of ``label`` (a series without it is left out)."""
    out: dict[str, float] = {}
    for labels, value in samples.get(name, ()):
        key = labels.get(label)
        if key is not None:
            out[key] = out.get(key, 0.0) + value
    return out


#: A histogram's cumulative buckets: upper bound (le, +inf last) -> count.
Buckets = dict[float, float]


def buckets(samples: Samples, family: str, label: str | None = None) -> dict[str, Buckets]:
    """The buckets of histogram ``family`` (its ``_bucket`` series), summed over every other
    label, per value of ``label`` (all under "" when ``label`` is None)."""
    out: dict[str, Buckets] = {}
    for labels, value in samples.get(f"{family}_bucket", ()):
        key = "" if label is None else labels.get(label)
        le = labels.get("le")
        if key is None or le is None:
            continue
        try:
            bound = float(le)  # "+Inf" reads as inf
        except ValueError:
            continue
        per = out.setdefault(key, {})
        per[bound] = per.get(bound, 0.0) + value
    return out


def increase(old: float | None, new: float | None) -> float | None:
    """How much a counter grew from ``old`` to ``new``; a counter that went down was reset
    (its process restarted), and counts ``new`` since (Prometheus' rule). None when the
    newer answer has no figure; an older one without it counts from zero (a family a server
    creates at its first request)."""
    if new is None:
        return None
    if old is None or new < old:
        return new
    return new - old


def bucket_increase(old: Buckets | None, new: Buckets | None) -> Buckets | None:
    """Each bucket's increase from ``old`` to ``new``; a histogram whose count went down was
    reset, and counts ``new`` since."""
    if not new:
        return None
    if not old or new.get(math.inf, 0.0) < old.get(math.inf, 0.0):
        return dict(new)
    return {le: max(count - old.get(le, 0.0), 0.0) for le, count in new.items()}


def quantile(q: float, counts: Buckets | None) -> float | None:
    """The ``q``-quantile of cumulative bucket counts, as Prometheus' histogram_quantile
    estimates it: linear within the bucket that holds the rank, from 0 (or the bucket
    below) to its bound; the highest finite bound when the rank falls in the +Inf bucket.
    None with no observation (or no +Inf bucket: not a whole histogram)."""
    if not counts or math.inf not in counts:
        return None
    bounds = sorted(counts)
    observed = counts[math.inf]
    if observed <= 0:
        return None
    rank = q * observed
    below_bound, below_count = 0.0, 0.0
    for bound in bounds:
        count = counts[bound]
        if count >= rank:
            if bound == math.inf:
                finite = [b for b in bounds if b != math.inf]
                return finite[-1] if finite else None
            if count == below_count:
                return bound
            if bound <= 0:
                return bound
            # Prometheus' own order of operations, so the figures agree to the last bit.
            return below_bound + (bound - below_bound) * ((rank - below_count) / (count - below_count))
        below_bound, below_count = bound, count
    return None
