# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus text parsing (prometheus_client's real parser), JSON-safe metric dicts, required-name checks and
jmespath selection, for metrics_probe and the drift checks."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import math
import traceback

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, one_line

PROMETHEUS_IMP_ERR = None
try:
    from prometheus_client.parser import text_string_to_metric_families
    HAS_PROMETHEUS = True
except ImportError:  # pragma: no cover - depends on the environment
    PROMETHEUS_IMP_ERR = traceback.format_exc()
    HAS_PROMETHEUS = False

JMESPATH_IMP_ERR = None
try:
    import jmespath
    HAS_JMESPATH = True
except ImportError:  # pragma: no cover - depends on the environment
    JMESPATH_IMP_ERR = traceback.format_exc()
    HAS_JMESPATH = False

_SUFFIXES = ("_total", "_created", "_count", "_sum", "_bucket", "_info", "_gcount", "_gsum")


def json_number(value):
    """Sample values as JSON-safe numbers: ints stay ints, NaN/Inf become the strings Prometheus prints."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        if value.is_integer() and abs(value) < 2 ** 53:
            return int(value)
    return value


def parse_metrics(text):
    """Prometheus exposition text -> {family: {type, help, unit, samples: [{name, labels, value[, timestamp]}]}}.

    Raises P3Error when prometheus_client is missing or the text does not parse.
    """
    if not HAS_PROMETHEUS:
        raise P3Error("the prometheus_client Python library is required to parse metrics "
                      "(pip install prometheus-client)")
    out = {}
    try:
        for family in text_string_to_metric_families(text or ""):
            entry = out.setdefault(family.name, dict(type=family.type, help=family.documentation or "",
                                                     unit=family.unit or "", samples=[]))
            for s in family.samples:
                sample = dict(name=s.name, labels=dict(s.labels), value=json_number(s.value))
                if s.timestamp is not None:
                    sample["timestamp"] = float(s.timestamp)
                entry["samples"].append(sample)
    except Exception as e:
        raise P3Error("cannot parse the metrics: %s" % one_line(e, 200))
    return out


def summarize(metrics):
    """{families, samples, by_type: {counter: n, ...}} of a parse_metrics() dict."""
    by_type = {}
    samples = 0
    for entry in metrics.values():
        by_type[entry["type"]] = by_type.get(entry["type"], 0) + 1
        samples += len(entry["samples"])
    return dict(families=len(metrics), samples=samples, by_type=by_type)


def has_metric(metrics, name):
    """True when name is a family, a sample name, or a family once a Prometheus suffix (_total...) is removed."""
    if name in metrics:
        return True
    for suffix in _SUFFIXES:
        if name.endswith(suffix) and name[: -len(suffix)] in metrics:
            return True
    for entry in metrics.values():
        for s in entry["samples"]:
            if s["name"] == name:
                return True
    return False


def missing_metrics(metrics, required):
    return [name for name in (required or []) if not has_metric(metrics, name)]


def select(metrics, expression):
    """Apply a jmespath expression to the metrics dict. Raises P3Error on a bad expression or missing jmespath."""
    if not HAS_JMESPATH:
        raise P3Error("the jmespath Python library is required for select (pip install jmespath)")
    try:
        return jmespath.search(expression, metrics)
    except Exception as e:
        raise P3Error("invalid select expression %r: %s" % (expression, one_line(e, 200)))


def compile_select(expression):
    """Validate a jmespath expression before any network call (malformed input fails the task)."""
    if not HAS_JMESPATH:
        raise P3Error("the jmespath Python library is required for select (pip install jmespath)")
    try:
        jmespath.compile(expression)
    except Exception as e:
        raise P3Error("invalid select expression %r: %s" % (expression, one_line(e, 200)))


def sample_value(metrics, family, labels=None, default=None):
    """The value of the first sample of family whose labels include labels (for drift checks)."""
    entry = metrics.get(family)
    if not entry:
        return default
    for s in entry["samples"]:
        if all(s["labels"].get(k) == str(v) for k, v in (labels or {}).items()):
            return s["value"]
    return default
