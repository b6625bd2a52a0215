# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared plumbing of p3.recovery: option specs, secret redaction, error mapping and the probe result.

Everything here is pure Python (no third-party import) so the unit tests can load it without Ansible running.
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import base64
import datetime
import errno
import os
import re
import socket
import ssl
import threading
import time

from urllib.parse import quote, unquote, urlsplit, urlunsplit

from ansible.module_utils.basic import AnsibleModule, env_fallback

MASK = "********"

# Option shared by every probe module (doc fragment p3.recovery.probe).
PROBE_ARGUMENT_SPEC = dict(
    fail_on_unhealthy=dict(type="bool", default=False),
)


def env(*names):
    """An argument_spec fallback that reads the first set environment variable of names."""
    return (env_fallback, list(names))


class P3Error(Exception):
    """A failure with a clean, one-line, secret-free message; modules turn it into fail_json(msg=...)."""

    def __init__(self, msg, **details):
        super(P3Error, self).__init__(msg)
        self.msg = msg
        self.details = details


# ---------------------------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------------------------

def one_line(text, limit=400):
    """Collapse whitespace (newlines, tabs) to single spaces and cut to limit characters."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = " ".join(str(text).split())
    if limit and len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


# The one timestamp format of the collection: ISO 8601, UTC, milliseconds (2026-12-06T15:46:36.123Z). Every
# timeline entry (modules, role Jinja through the timeline_entry filter) and every incident-log entry (callback) uses
# it, so the entries of a run sort as strings in the order they happened.
TIMELINE_DETAIL_LIMIT = 600


def utc_timestamp(now=None):
    """now (an aware datetime, default the current time) as 2026-12-06T15:46:36.123Z."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_timestamp(text):
    """A timestamp of utc_timestamp (or of an older log, whole seconds: 2026-12-06T15:46:36Z) -> an aware datetime."""
    return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00"))


def timeline_entry(action, target, detail, now=None):
    """One entry of an incident timeline, the shape every action returns in C(timeline): {ts, action, target,
    detail}; detail on one line (at most TIMELINE_DETAIL_LIMIT characters)."""
    return dict(ts=utc_timestamp(now), action=action, target=target,
                detail=one_line(detail, TIMELINE_DETAIL_LIMIT))


def secret_variants(secret):
    """The forms in which a secret can show up in a message: raw, URL-quoted, URL-unquoted."""
    if not secret:
        return []
    secret = str(secret)
    out = {secret}
    try:
        out.add(quote(secret, safe=""))
        out.add(quote(secret))
        out.add(unquote(secret))
    except Exception:  # pragma: no cover - defensive, quote() accepts any str
        pass
    # Longest first so a quoted form is not half-replaced by a shorter raw one.
    return sorted((s for s in out if s), key=len, reverse=True)


_URL_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s]*@)")
_KV_PASSWORD = re.compile(r"(?P<key>\bpassword\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_QUERY_PASSWORD = re.compile(r"(?P<key>[?&]password=)(?P<value>[^&#\s]*)", re.IGNORECASE)


def redact_text(text, secrets=()):
    """Remove credentials from free text: URL userinfo, password=... pairs and every literal secret given."""
    if text is None:
        return text
    text = str(text)
    for secret in secrets or ():
        for variant in secret_variants(secret):
            if len(variant) >= 1:
                text = text.replace(variant, MASK)
    text = _URL_USERINFO.sub(_mask_userinfo, text)
    text = _KV_PASSWORD.sub(lambda m: m.group("key") + MASK, text)
    text = _QUERY_PASSWORD.sub(lambda m: m.group("key") + MASK, text)
    return text


def _mask_userinfo(match):
    userinfo = match.group("userinfo")[:-1]
    if ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        return "%s%s:%s@" % (match.group("scheme"), user, MASK)
    return match.group(0)


def redact_url(url):
    """A URL without credentials (no user, no password, no password= query parameter), for messages."""
    if url is None:
        return None
    url = str(url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return redact_text(url)
    if not parts.scheme or not parts.netloc:
        return redact_text(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    query = _QUERY_PASSWORD.sub(lambda m: m.group("key") + MASK, "?" + parts.query)[1:] if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def url_secrets(url):
    """The password embedded in a URL (userinfo or ?password=), to register as no_log values."""
    out = []
    if not url:
        return out
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return out
    if parts.password:
        out.append(parts.password)
        out.append(unquote(parts.password))
    for m in _QUERY_PASSWORD.finditer("?" + (parts.query or "")):
        if m.group("value"):
            out.append(m.group("value"))
            out.append(unquote(m.group("value")))
    return [s for s in out if s]


_SCHEME = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://")
_KV_SECRET = re.compile(r"\b(?:password|passwd|pwd)\s*=\s*", re.IGNORECASE)
_KV_NEXT_KEY = re.compile(r"\s+[A-Za-z_][A-Za-z0-9_]*\s*=")
# Option and header names whose values are credentials as a whole.
_SECRET_NAME_WORDS = ("authorization", "cookie", "token", "secret", "api-key", "apikey", "api_key", "password",
                      "passwd", "auth", "private_key", "privatekey", "credential")


def is_secret_name(name):
    """Option / header / variable names whose values are credentials (Authorization, X-Api-Key, db_password...)."""
    name = str(name).lower()
    return any(w in name for w in _SECRET_NAME_WORDS)


def _with_pieces(value):
    """value plus its whitespace- and @-separated pieces: a malformed DSN makes libraries quote only a fragment."""
    out = [value]
    pieces = [p for p in re.split(r"[\s@]+", value) if p]
    if len(pieces) > 1:
        out.extend(pieces)
    return out


def text_secrets(text):
    """Every password a string may carry, however malformed: URL userinfo (an unencoded @ or space in the
    password included: each possible end of the userinfo counts), ?password=, and key=value DSN passwords
    (quoted, or unquoted up to the next keyword). Over-collects on purpose; the result feeds no_log values."""
    out = []
    if not text or not isinstance(text, str):
        return out
    schemes = list(_SCHEME.finditer(text))
    for idx, m in enumerate(schemes):
        start = m.end()
        stop = schemes[idx + 1].start() if idx + 1 < len(schemes) else len(text)
        rest = text[start:stop]
        at = rest.find("@")
        while at >= 0:
            userinfo = rest[:at]
            if ":" in userinfo:
                password = userinfo.split(":", 1)[1]
                if password:
                    out.extend(_with_pieces(password))
                    out.append(unquote(password))
            nxt = rest.find("@", at + 1)
            if nxt >= 0 and any(c in rest[at + 1:nxt] for c in "/?#"):
                break  # a later @ in the path or query is not part of the userinfo
            at = nxt
    for found in url_secrets(text):
        out.extend(_with_pieces(found))
    for m in _KV_SECRET.finditer(text):
        rest = text[m.end():]
        if rest[:1] in ("'", '"'):
            q = rest[0]
            end = 1
            while end < len(rest) and rest[end] != q:
                end += 2 if rest[end] == "\\" else 1
            value = rest[1:end]
            out.extend(_with_pieces(value))
            out.extend(_with_pieces(value.replace("\\" + q, q).replace("\\\\", "\\")))
        else:
            nxt = _KV_NEXT_KEY.search(rest)
            value = (rest[:nxt.start()] if nxt else rest).strip()
            out.extend(_with_pieces(value))
            first = rest.split(None, 1)[0] if rest.split() else ""
            out.append(first)
    unique = []
    for found in out:
        if found and found not in unique:
            unique.append(found)
    return unique


def header_secrets(value):
    """A credential header value, the token after its scheme ('Bearer x'), and a Basic password."""
    value = str(value)
    out = [value]
    scheme, sep, token = value.partition(" ")
    if sep and token.strip():
        out.append(token.strip())
        if scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8", "replace")
                out.append(decoded)
                if ":" in decoded:
                    out.append(decoded.split(":", 1)[1])
            except (ValueError, TypeError):
                pass
    return out


def value_secrets(name, value):
    """Secrets in one option value (recursively for lists and dicts): credential-named keys as a whole,
    passwords inside URL / DSN strings everywhere."""
    out = []
    if value is None or isinstance(value, bool):
        return out
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(value_secrets(k, v))
        return out
    if isinstance(value, (list, tuple, set)):
        for v in value:
            out.extend(value_secrets(name, v))
        return out
    if name is not None and is_secret_name(name) and not isinstance(value, (int, float)):
        out.extend(header_secrets(value))
    if isinstance(value, str):
        out.extend(text_secrets(value))
    return out


# Options whose URLs are node-provider URLs: an API key may sit in a path segment or a query value.
PROVIDER_URL_OPTIONS = ("rpc_url",)


def provider_url_secrets(url):
    """Credentials of a provider URL (https://host/v3/<key>, ?apikey=...): the userinfo password, every path
    segment of 16+ characters and every query value of 8+ characters."""
    out = list(url_secrets(url))
    try:
        parts = urlsplit(str(url))
    except ValueError:
        return out
    for segment in (parts.path or "").split("/"):
        if len(segment) >= 16:
            out.append(segment)
    for pair in (parts.query or "").split("&"):
        if "=" in pair and len(pair.split("=", 1)[1]) >= 8:
            out.append(pair.split("=", 1)[1])
    return out


def params_secrets(params, argument_spec=None, environ=None):
    """The secrets in raw module parameters and in the environment variables their options fall back to."""
    out = value_secrets(None, params or {})
    environ = os.environ if environ is None else environ
    for name in PROVIDER_URL_OPTIONS:
        if isinstance((params or {}).get(name), str):
            out.extend(provider_url_secrets(params[name]))
    for name, spec in (argument_spec or {}).items():
        fallback = spec.get("fallback") if isinstance(spec, dict) else None
        if fallback and fallback[0] is env_fallback:
            names = fallback[1] if len(fallback) > 1 else []
            for var in (names[0] if names and isinstance(names[0], (list, tuple)) else names):
                if environ.get(var):
                    out.extend(value_secrets(name, environ[var]))
                    if name in PROVIDER_URL_OPTIONS:
                        out.extend(provider_url_secrets(environ[var]))
                    if spec.get("no_log"):
                        out.append(environ[var])
        if isinstance(spec, dict) and spec.get("no_log") and isinstance((params or {}).get(name), str):
            out.append(params[name])
    return out


class P3Module(AnsibleModule):
    """AnsibleModule that registers every secret of its raw parameters as a no_log value BEFORE the argument
    spec is validated, so no failure on any path (a wrong type, a missing option, a bad address, an early
    fail_json in the module) can print a password: Ansible masks fail_json/exit_json and the invocation itself.

    ansible-core loads the parameters, then validates them (and only then learns the no_log options); a
    validation error is reported with the invocation. This hook runs between the two."""

    def _load_params(self):
        super(P3Module, self)._load_params()
        register_secrets(self, params_secrets(self.params, self.argument_spec))


def close_quietly(client):
    """Close a client (Redis, PostgreSQL, a socket) that may be None or already broken; never raises: used in
    finally blocks, where a close error must not replace the result or the real error."""
    if client is None:
        return
    try:
        client.close()
    except Exception:  # pylint: disable=broad-except
        pass


def hostport(host, port):
    """host:port, with brackets around IPv6 literals."""
    if host and ":" in str(host) and not str(host).startswith("["):
        host = "[%s]" % host
    return "%s:%s" % (host, port)


# ---------------------------------------------------------------------------------------------------------------
# Error mapping
# ---------------------------------------------------------------------------------------------------------------

_ERRNO_TEXT = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by peer",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "timed out",
    errno.EPIPE: "connection closed (broken pipe)",
    errno.ECONNABORTED: "connection aborted",
    errno.EADDRNOTAVAIL: "address not available",
}


def exception_chain(exc):
    """exc followed by its causes / contexts (the library wrappers keep the socket error there)."""
    seen = []
    while exc is not None and exc not in seen and len(seen) < 10:
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__ or (exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else None)
        if exc is None:
            break
    return seen


def _timeout_text(timeout):
    return "timed out after %ss" % num_text(timeout) if timeout else "timed out"


def num_text(value):
    """10.0 -> '10', 0.25 -> '0.25', anything else as str()."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return str(value)
    return ("%d" % f) if f == int(f) else ("%g" % f)


def describe_os_error(exc, timeout=None):
    """A short cause for a socket-level error, or None when exc is not one."""
    if isinstance(exc, socket.gaierror):
        text = exc.args[1] if len(exc.args) > 1 else str(exc)
        return "name resolution failed (%s)" % one_line(text, 120)
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
        return "TLS certificate verification failed (%s)" % one_line(detail, 160)
    if isinstance(exc, ssl.SSLError):
        return "TLS error (%s)" % one_line(getattr(exc, "reason", None) or exc, 160)
    if isinstance(exc, socket.timeout) or isinstance(exc, TimeoutError):
        return _timeout_text(timeout)
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, OSError) and exc.errno in _ERRNO_TEXT:
        return _ERRNO_TEXT[exc.errno]
    if isinstance(exc, OSError) and isinstance(exc.errno, int) and exc.strerror:
        return one_line(exc.strerror, 160).lower()
    return None


_TEXT_PATTERNS = [
    (re.compile(r"connection refused", re.I), "connection refused"),
    (re.compile(r"timed? ?out|timeout", re.I), None),  # None -> timeout text
    (re.compile(r"name or service not known|nodename nor servname|could not translate host name|"
                r"temporary failure in name resolution|no address associated", re.I), "name resolution failed"),
    (re.compile(r"no route to host", re.I), "no route to host"),
    (re.compile(r"network is unreachable", re.I), "network unreachable"),
    (re.compile(r"connection reset", re.I), "connection reset by peer"),
    (re.compile(r"certificate verify failed", re.I), "TLS certificate verification failed"),
]


def describe_text(text, timeout=None):
    """Map a library message to a short cause when it is a well-known network failure, else None."""
    for pattern, cause in _TEXT_PATTERNS:
        if pattern.search(text or ""):
            return cause if cause is not None else _timeout_text(timeout)
    return None


def describe_error(exc, timeout=None, secrets=()):
    """One short, secret-free line saying why exc happened (the cause only, not the target)."""
    for e in exception_chain(exc):
        cause = describe_os_error(e, timeout)
        if cause:
            return cause
    text = redact_text(one_line(str(exc) or exc.__class__.__name__, 300), secrets)
    return describe_text(text, timeout) or text


def target_error(target, exc, timeout=None, secrets=()):
    """'<target> <cause>' e.g. '127.0.0.1:17001 connection refused'."""
    return "%s %s" % (target, describe_error(exc, timeout=timeout, secrets=secrets))


# ---------------------------------------------------------------------------------------------------------------
# Total deadline
# ---------------------------------------------------------------------------------------------------------------

class DeadlineExceeded(P3Error):
    """An operation refused (or cut) because the total deadline of the call has passed. Not an OSError and not a
    library error, so no client library retries it: it ends the call."""


class Deadline(object):
    """A total deadline over many operations: each operation gets min(its own timeout, the time left), and none
    starts once the time is up. seconds=None means no total bound (each operation keeps its own timeout).
    name is the option that set it, for the failure message."""

    def __init__(self, seconds, name="deadline", clock=time.monotonic):
        self.seconds = None if seconds is None else float(seconds)
        self.name = name
        self.clock = clock
        self.end = None if self.seconds is None else clock() + self.seconds

    def remaining(self):
        """Seconds left (never negative), or None without a bound."""
        if self.end is None:
            return None
        return max(0.0, self.end - self.clock())

    @property
    def expired(self):
        return self.end is not None and self.clock() >= self.end

    def bound(self, timeout):
        """min(timeout, time left); timeout None means no per-operation bound."""
        left = self.remaining()
        if left is None:
            return timeout
        if timeout is None:
            return left
        return min(float(timeout), left)

    def cut(self, end):
        """The earlier of a monotonic end time (a wait loop's own deadline) and this deadline's end."""
        if self.end is None:
            return end
        if end is None:
            return self.end
        return min(end, self.end)

    def message(self, target):
        return "%s deadline of %ss exceeded (%s)" % (target, num_text(self.seconds), self.name)

    def check(self, target):
        """Raise DeadlineExceeded naming target when the time is up."""
        if self.expired:
            raise DeadlineExceeded(self.message(target), target=target)


# ---------------------------------------------------------------------------------------------------------------
# Probe result
# ---------------------------------------------------------------------------------------------------------------

def run_parallel(calls, deadline=None, name="p3"):
    """Run {key: callable} at once, one daemon thread each (a call stuck past its own timeouts never keeps the module
    process alive). Returns (results, errors, late): {key: return value} of the calls that returned, {key: exception}
    of those that raised, and the keys still running after deadline seconds (None = wait for every call; the calls
    bound their own network waits, the deadline is a last-resort guard)."""
    results, errors, threads = {}, {}, []

    def run(key, fn):
        try:
            results[key] = fn()
        except Exception as e:  # pylint: disable=broad-except
            # handed to the caller, which names the target
            errors[key] = e

    for key, fn in calls.items():
        t = threading.Thread(target=run, args=(key, fn), name="%s-%s" % (name, key))
        t.daemon = True
        t.start()
        threads.append((key, t))
    end = time.monotonic() + deadline if deadline is not None else None
    late = []
    for key, t in threads:
        t.join(None if end is None else max(0.0, end - time.monotonic()))
        if t.is_alive():
            late.append(key)
    return results, errors, late


def probe_result(healthy, reason, **evidence):
    """The shape every probe returns: changed=false, healthy, a one-line reason, then the evidence fields."""
    result = dict(changed=False, healthy=bool(healthy), reason=one_line(reason, 1000))
    result.update(evidence)
    return result


def register_secrets(module, secrets):
    """Add secrets (and their URL-quoted forms) to the module's no_log values so no output can carry them."""
    for secret in secrets or ():
        for variant in secret_variants(secret):
            # Very short values would mask unrelated text everywhere; Ansible itself skips them too.
            if len(variant) >= 3:
                module.no_log_values.add(variant)


def exit_probe(module, result):
    """exit_json the probe result, or fail_json with the reason when fail_on_unhealthy is set and it is unhealthy."""
    if not result.get("healthy") and module.params.get("fail_on_unhealthy"):
        result = dict(result)
        module.fail_json(msg=result.get("reason") or "unhealthy", **result)
    module.exit_json(**result)


def fail_clean(module, error, **extra):
    """fail_json with the one-line message of a P3Error (or any exception, mapped and redacted)."""
    if isinstance(error, P3Error):
        details = dict(error.details)
        details.update(extra)
        module.fail_json(msg=one_line(error.msg, 1000), **details)
    module.fail_json(msg=one_line(describe_error(error), 1000), **extra)
