# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing a JSON run report: shared by the write_report module (remote hosts) and its action plugin (which
writes in-process when the task runs on the controller's local connection), and the redaction every report and
incident log gets (no module invocations; other sessions' SQL text and live session ids only when asked for)."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import binascii
import datetime
import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error, num_text

REPORT_ARGUMENT_SPEC = dict(
    data=dict(type="dict", required=True),
    dir=dict(type="path", default="reports"),
    prefix=dict(type="str", default="report"),
    path=dict(type="path"),
    mode=dict(type="raw", default="0640"),
    include_sensitive=dict(type="bool", default=False),
)

# Keys whose value is SQL text of some session (pg_stat_activity.query): replaced by a fingerprint.
SQL_KEYS = ("query",)
# Keys whose value is, or names, a live session (a bearer id): replaced by a hash of the id.
SESSION_KEYS = ("session_id", "session_ids", "sessionId", "sessionToken", "session", "sessions", "key", "keys", "sid",
                "token")
_SQL_STRING = re.compile(r"'(?:[^']|'')*'")
_SQL_DOLLAR = re.compile(r"\$([A-Za-z_]*)\$.*?\$\1\$", re.S)
_SQL_NUMBER = re.compile(r"(?<![\w$])[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?\b")
_SQL_HEX = re.compile(r"(?<![\w$])(?:x|X|E|e|B|b)'[^']*'")
_WS = re.compile(r"\s+")


def file_mode(mode):
    """'0640' / '640' / 0o640 -> int; raises P3Error for anything else."""
    try:
        value = int(mode, 8) if isinstance(mode, str) else int(mode)
    except (TypeError, ValueError):
        raise P3Error("mode must be an octal file mode like '0640', got %r" % (mode,))
    if not 0 <= value <= 0o7777:
        raise P3Error("mode must be an octal file mode like '0640', got %r" % (mode,))
    return value


# ---------------------------------------------------------------------------------------------------------------
# Redaction
# ---------------------------------------------------------------------------------------------------------------

def normalize_sql(text):
    """SQL with its literals replaced by '?' (strings, dollar-quoted bodies, numbers), whitespace collapsed."""
    text = _SQL_DOLLAR.sub("?", str(text))
    text = _SQL_HEX.sub("?", text)
    text = _SQL_STRING.sub("?", text)
    text = _SQL_NUMBER.sub("?", text)
    return _WS.sub(" ", text).strip()


def sql_fingerprint(text, limit=120):
    """'fingerprint:<12 hex> <normalised SQL, cut>': the same statement shape gives the same fingerprint,
    and no literal (a password, a token) survives."""
    norm = normalize_sql(text)
    digest = hashlib.sha256(norm.encode("utf-8")).hexdigest()[:12]
    if len(norm) > limit:
        norm = norm[: limit - 3] + "..."
    return "fingerprint:%s %s" % (digest, norm)


def hash_id(value):
    """A session id (or a key naming one, 'session:<id>') -> 'sha256:<12 hex>' (the key's prefix kept)."""
    text = str(value)
    prefix = ""
    if ":" in text:
        prefix, text = text.rsplit(":", 1)
        prefix += ":"
    return "%ssha256:%s" % (prefix, hashlib.sha256(text.encode("utf-8")).hexdigest()[:12])


def _is_pattern(value):
    """A key pattern (session:*, {bull}:anchor:*) names no session: kept as it is."""
    return any(c in value for c in "*?[")


def _redact_value(key, value, sensitive):
    if isinstance(value, dict):
        return redact(value, sensitive)
    if isinstance(value, (list, tuple)):
        if not sensitive and key in SESSION_KEYS:
            return [hash_id(v) if isinstance(v, str) and v and not _is_pattern(v) else _redact_value(None, v, sensitive)
                    for v in value]
        return [_redact_value(None, v, sensitive) for v in value]
    if not sensitive and isinstance(value, str) and value:
        if key in SQL_KEYS:
            return sql_fingerprint(value)
        if key in SESSION_KEYS and not _is_pattern(value):
            return hash_id(value)
    return value


def redact(data, include_sensitive=False):
    """A copy of data for a report or an incident log: every C(invocation) (module arguments) removed at any
    depth; unless include_sensitive, SQL text under SQL_KEYS replaced by its fingerprint and session ids under
    SESSION_KEYS by their hash."""
    if isinstance(data, dict):
        return dict((k, _redact_value(k, v, include_sensitive)) for k, v in data.items() if k != "invocation")
    return _redact_value(None, data, include_sensitive)


# ---------------------------------------------------------------------------------------------------------------
# Names and paths
# ---------------------------------------------------------------------------------------------------------------

def safe_name(value, what):
    """A file name part from a variable: no path separator, no '..', not empty; else P3Error naming it."""
    text = "" if value is None else str(value)
    if not text or "/" in text or os.sep in text or (os.altsep and os.altsep in text) or ".." in text or "\0" in text:
        raise P3Error("%s must be a plain file name part (no '/', no '..', not empty), got %r" % (what, value))
    return text


def path_under(directory, name):
    """directory/name, resolved (symlinks too), verified to stay inside directory; else P3Error."""
    base = os.path.realpath(directory)
    path = os.path.realpath(os.path.join(base, name))
    if os.path.dirname(path) != base:
        raise P3Error("%s escapes the directory %s" % (name, directory))
    return path


def make_private_dir(directory, mode=0o700):
    """Create directory with mode whatever the umask, and the parents it needs the way `mkdir -p -m MODE` does (with
    the process umask: a private leaf must not make the path above it unreadable to others); an existing directory
    is left as it is."""
    if os.path.isdir(directory):
        return
    parent = os.path.dirname(os.path.abspath(directory))
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent)
        except OSError:
            if not os.path.isdir(parent):
                raise
    old = os.umask(0o077)
    try:
        os.mkdir(directory, mode)
    except OSError:
        if not os.path.isdir(directory):
            raise
    finally:
        os.umask(old)


def flock_exclusive(fd, timeout=None, what="file"):
    """Take an exclusive flock on the open descriptor fd (released when it is closed or unlocked): wait for it
    without end when timeout is None, else at most timeout seconds and then P3Error naming what (the incident log:
    one run appends at a time; the EDA guard's state). The one home of the project's file locking."""
    if timeout is None:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return
    end = time.monotonic() + float(timeout)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise P3Error("%s: lock: %s" % (what, e.strerror or e))
        if time.monotonic() >= end:
            raise P3Error("%s: still locked by another run after %ss" % (what, num_text(timeout)))
        time.sleep(0.05)


def unique_name(prefix, now):
    """<prefix>-<UTC to the microsecond>-<pid>-<random>.json: unique per run even within one second."""
    return "%s-%s-%d-%s.json" % (prefix, now.strftime("%Y%m%dT%H%M%S%fZ"), os.getpid(),
                                 binascii.hexlify(os.urandom(3)).decode("ascii"))


def _check_path(path):
    parts = str(path).replace(os.altsep or os.sep, os.sep).split(os.sep)
    if ".." in parts:
        raise P3Error("path must not contain '..', got %r" % (path,))


def write_report(params, check_mode=False, now=None):
    """Write params['data'] as pretty JSON; return {changed: false, path, generated_at}.

    The file gets a name unique to this run (microseconds, pid, random), written to a temporary file and then
    linked into place, which fails if the name exists, so no report ever replaces another; or it is O(path),
    replaced atomically (the caller chose that file).
    The report names its own path (C(report)). A report is output, not state: changed is always false. In check
    mode nothing is written.
    """
    now = now or datetime.datetime.now(datetime.timezone.utc)
    generated_at = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    if params.get("path"):
        _check_path(params["path"])
        path = params["path"]
    else:
        prefix = safe_name(params.get("prefix") or "report", "prefix")
        directory = params.get("dir") or "reports"  # the boundary itself: any path the operator chose
        path = os.path.join(directory, unique_name(prefix, now))
    data = redact(dict(params["data"]), params.get("include_sensitive", False))
    data.setdefault("generated_at", generated_at)
    data["report"] = path
    result = dict(changed=False, path=path, generated_at=data["generated_at"])
    mode = file_mode(params.get("mode", "0640"))
    if check_mode:
        return result
    directory = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        make_private_dir(directory)
        if not params.get("path"):
            path_under(directory, os.path.basename(path))
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".report-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, default=str)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if params.get("path"):
            os.rename(tmp, path)  # the caller's own choice of file: replaced atomically
            tmp = None
        else:
            os.link(tmp, path)  # a generated name: atomic and exclusive, EEXIST instead of replacing a report
    except FileExistsError:
        raise P3Error("cannot write report %s: it already exists (reports are never overwritten)" % path, path=path)
    except (OSError, ValueError, TypeError) as e:
        raise P3Error("cannot write report %s: %s" % (path, e), path=path)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return result
