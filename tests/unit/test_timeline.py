"""Issue 16 §2: one timeline entry - one function (module_utils/common.py) for every module, filter and the
incident callback, one timestamp format (UTC, milliseconds)."""
import datetime
import glob
import os
import re
import types

from ansible_collections.p3.recovery.plugins.callback import incident
from ansible_collections.p3.recovery.plugins.filter import timeline as timeline_filter
from ansible_collections.p3.recovery.plugins.module_utils import common, redis_cluster, sessions

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


def test_utc_timestamp_is_iso_utc_with_milliseconds():
    when = datetime.datetime(2026, 12, 6, 16, 46, 36, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=1)))
    assert common.utc_timestamp(when) == "2026-12-06T15:46:36.123Z"
    assert TS.match(common.utc_timestamp())


def test_timestamps_sort_in_time_order_as_strings():
    base = datetime.datetime(2026, 12, 6, 15, 46, 36, tzinfo=datetime.timezone.utc)
    stamps = [common.utc_timestamp(base + datetime.timedelta(microseconds=us)) for us in (0, 1000, 999000, 1000000)]
    assert stamps == sorted(stamps) and len(set(stamps)) == 4


def test_parse_timestamp_reads_ours_and_older_whole_second_logs():
    assert common.parse_timestamp("2026-12-06T15:46:36.123Z") == datetime.datetime(
        2026, 12, 6, 15, 46, 36, 123000, tzinfo=datetime.timezone.utc)
    assert common.parse_timestamp("2026-12-06T15:46:36Z") == datetime.datetime(
        2026, 12, 6, 15, 46, 36, tzinfo=datetime.timezone.utc)


def test_timeline_entry_shape_and_one_line_detail():
    e = common.timeline_entry("cluster forget", "10.0.0.1:7000", "line one\n  line two " + "x" * 2000)
    assert set(e) == {"ts", "action", "target", "detail"} and TS.match(e["ts"])
    assert e["action"] == "cluster forget" and e["target"] == "10.0.0.1:7000"
    assert "\n" not in e["detail"] and e["detail"].startswith("line one line two x")
    assert len(e["detail"]) == common.TIMELINE_DETAIL_LIMIT and e["detail"].endswith("...")


def test_the_backends_and_the_filter_use_the_one_function():
    assert redis_cluster.timeline_entry is common.timeline_entry
    assert not hasattr(sessions, "timeline_entry")  # its modules import the one of common
    e = timeline_filter.FilterModule().filters()["timeline_entry"]("app_restart", "app1,app2", "health-gated")
    assert TS.match(e["ts"]) and (e["action"], e["target"], e["detail"]) == ("app_restart", "app1,app2", "health-gated")


def test_no_other_home_builds_a_timeline_entry():
    """No module, module_util, filter or callback builds a timeline entry or its timestamp itself, and no role
    writes one in Jinja: a new copy fails here."""
    own = []
    for path in glob.glob(os.path.join(ROOT, "plugins", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, ROOT)
        if rel in ("plugins/module_utils/common.py", "plugins/filter/timeline.py"):
            continue
        text = open(path).read()
        if re.search(r"def (timeline_entry|_entry|_now|utc_now|_now_iso)\(", text) or \
                re.search(r"(\bts=|[\"']ts[\"']\s*:)\s*(datetime|_now|utc_now|time\.)", text):
            own.append(rel)
    for path in glob.glob(os.path.join(ROOT, "roles", "*", "**", "*.yml"), recursive=True):
        if re.search(r"'ts'\s*:", open(path).read()):
            own.append(os.path.relpath(path, ROOT))
    assert own == []


def test_callback_entries_use_the_same_format_and_the_postmortem_reads_both():
    cb = incident.CallbackModule()
    task = types.SimpleNamespace(resolved_action="p3.recovery.redis_probe", name="Probe redis")
    cb.v2_runner_on_ok(types.SimpleNamespace(result={"healthy": True, "reason": "ok", "changed": False}, task=task,
                                             host=types.SimpleNamespace(name="localhost")))
    assert TS.match(cb._entries[0]["ts"]) and TS.match(cb._started)
    entries = [
        {"ts": "2026-11-28T10:00:00Z", "run": "a", "host": "h", "task": "Probe db", "status": "ok", "kind": "probe",
         "healthy": False, "reason": "db down"},
        {"ts": "2026-11-28T10:07:30.500Z", "run": "b", "host": "h", "task": "Probe db", "status": "ok",
         "kind": "probe", "healthy": True},
    ]
    pm = incident.render_postmortem(entries)
    assert "0 hours 7 minutes 30 seconds" in pm and "- 10:07:30 - Service restored" in pm
