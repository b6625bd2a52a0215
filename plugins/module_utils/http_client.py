# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""HTTP plumbing of p3.recovery: shared options and one request helper that never raises for a service failure:
4xx/5xx bodies are read, transport errors become a one-line cause.

The doc fragment is p3.recovery.http_api (not "http": pylint would lint the stdlib package of that name instead).
"""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import inspect
import json
import socket
import ssl
import time

from urllib.error import HTTPError
from urllib.parse import urlsplit

from ansible.module_utils.urls import Request, make_context, open_url

from ansible_collections.p3.recovery.plugins.module_utils.common import (
    P3Error,
    describe_error,
    env,
    header_secrets,
    is_secret_name,
    num_text,
    one_line,
    redact_text,
    redact_url,
    register_secrets,
    run_parallel,
    url_secrets,
)

# The options of doc fragment p3.recovery.http_api, defined once.
HTTP_ARGUMENT_SPEC = dict(
    url=dict(type="str", fallback=env("P3_APP_URL")),
    timeout=dict(type="float", default=5.0),
    headers=dict(type="dict", default={}),
    validate_certs=dict(type="bool", default=True),
    ca_path=dict(type="path"),
)

MAX_BODY = 16 * 1024 * 1024


def http_argument_spec(**extra):
    spec = dict(HTTP_ARGUMENT_SPEC)
    spec.update(extra)
    return spec


def is_secret_header(name):
    """Header names whose values are credentials (registered as no_log, masked in messages)."""
    return is_secret_name(name)


def check_url(url, option="url", schemes=("http", "https")):
    """Raise P3Error unless url is an absolute http(s) URL with a host (and a numeric port if any)."""
    if not url:
        raise P3Error("%s is required" % option)
    try:
        parts = urlsplit(str(url).strip())
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as e:
        raise P3Error("invalid %s '%s': %s" % (option, redact_url(url), one_line(e)))
    if parts.scheme not in schemes:
        wanted = " or ".join(s + "://" for s in schemes)
        raise P3Error("invalid %s '%s': scheme must be %s" % (option, redact_url(url), wanted))
    if not parts.hostname:
        raise P3Error("invalid %s '%s': no host" % (option, redact_url(url)))
    return str(url).strip()


def join_url(base, path):
    """Base URL + path ('/health'); a path that is itself an absolute URL is used as is."""
    if not path:
        return base
    if "://" in path:
        return path
    return base.rstrip("/") + "/" + path.lstrip("/")


def decode_body(raw, content_type=None):
    """bytes -> (parsed JSON or None, text)."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else (raw or "")
    parsed = None
    if text.strip()[:1] in ("{", "[") or "json" in (content_type or ""):
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = None
    return parsed, text


def truncate(text, limit=2000):
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "... (%d bytes, truncated)" % len(text)


try:
    _REQUEST_TAKES_CONTEXT = "context" in inspect.signature(Request.open).parameters  # ansible-core 2.16+
except (TypeError, ValueError):  # pragma: no cover
    _REQUEST_TAKES_CONTEXT = False


def tls_context(url, validate_certs=True, ca_path=None):
    """The SSL context for url, built once per target: open_url would load the CA store (~50 ms) per request,
    even for plain http, which would distort latency_ms. ca_path: a PEM bundle of the CA(s) that sign the server's
    certificate (a private CA), trusted instead of the system store."""
    if str(url).lower().startswith("https://"):
        if ca_path:
            try:
                return make_context(cafile=ca_path, validate_certs=validate_certs)
            except (IOError, OSError, ssl.SSLError) as e:
                raise P3Error("cannot load ca_path %s: %s" % (ca_path, one_line(getattr(e, "strerror", None) or e)))
        return make_context(validate_certs=validate_certs)
    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # never used for http://, but saves loading the CA store


def request(url, method="GET", timeout=5.0, headers=None, validate_certs=True, data=None, secrets=(),
            max_body=MAX_BODY, context=None, ca_path=None):
    """One HTTP request. Never raises for a service failure.

    timeout is a total deadline over name resolution, connect, headers and the whole body: socket timeouts
    alone bound each read, and a server that dribbles its answer a byte at a time would never trip them. The
    exchange runs in a daemon thread that is abandoned at the deadline.

    Returns dict(url (redacted), method, status (int or None), ok (2xx), latency_ms, content_type, raw (bytes),
    json (parsed or None), text, error (one-line cause when there was no HTTP answer, else None)).
    """
    shown = redact_url(url)
    out = dict(url=shown, method=method, status=None, ok=False, latency_ms=None, content_type=None, raw=b"",
               json=None, text="", error=None)
    kwargs = dict(method=method, data=data, headers=headers or {}, timeout=timeout, validate_certs=validate_certs,
                  follow_redirects="safe", use_netrc=False)
    if _REQUEST_TAKES_CONTEXT:
        if context is None:
            try:
                context = tls_context(url, validate_certs, ca_path)
            except P3Error as e:
                out["error"] = e.msg
                return out
        kwargs["context"] = context
    elif ca_path:
        kwargs["ca_path"] = ca_path
    t0 = time.monotonic()
    deadline = t0 + float(timeout)
    work = dict(status=None, content_type=None, raw=b"", error=None)
    results, errors, late = run_parallel({"exchange": lambda: _exchange(url, kwargs, work, deadline, max_body)},
                                         deadline=float(timeout), name="http")
    out["latency_ms"] = round((time.monotonic() - t0) * 1000.0, 2)
    if late:
        out["error"] = "timed out after %ss" % num_text(timeout)
        if work["status"] is not None:
            out["status"] = work["status"]
            out["error"] = "reading the body failed: %s" % out["error"]
        return out
    exc = errors.get("exchange")
    out["status"], out["content_type"], out["raw"] = work["status"], work["content_type"], work["raw"]
    if exc is not None:  # transport failure: refused, timeout, DNS, TLS, reset...
        out["error"] = describe_error(exc, timeout=num_text(timeout), secrets=secrets)
        if out["status"] is not None:  # answered, then the body read failed
            out["error"] = "reading the body failed: %s" % out["error"]
    out["json"], out["text"] = decode_body(out["raw"], out["content_type"])
    out["text"] = redact_text(out["text"], secrets)
    out["ok"] = out["error"] is None and out["status"] is not None and 200 <= out["status"] < 300
    return out


def _exchange(url, kwargs, work, deadline, max_body):
    """Send the request and read the answer into work (status, content_type, raw); raises transport errors.
    Each body read gets the time left as its socket timeout, so the thread itself ends near the deadline."""
    resp = None
    try:
        try:
            if _REQUEST_TAKES_CONTEXT:
                resp = Request().open(url=url, **kwargs)
            else:
                resp = open_url(url, **kwargs)
            status = resp.getcode()
        except HTTPError as e:  # 4xx / 5xx: still an answer with a body
            resp = e
            status = e.code
        work["status"] = int(status) if status is not None else None
        work["content_type"] = (resp.headers.get("Content-Type") if resp.headers is not None else None)
        sock = _response_socket(resp)
        chunks, size = [], 0
        while size < max_body:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise socket.timeout("timed out")
            if sock is not None:
                sock.settimeout(remaining)
            chunk = resp.read1(min(65536, max_body - size)) if hasattr(resp, "read1") else resp.read(max_body - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        work["raw"] = b"".join(chunks)
    finally:
        if resp is not None:
            try:
                resp.close()
            except Exception:  # pylint: disable=broad-except
                pass


def _response_socket(resp):
    """The socket under an http.client response (to give each read the time left), or None."""
    fp = getattr(resp, "fp", None)
    for attr in ("raw", "_sock"):
        fp = getattr(fp, attr, None) if fp is not None else None
        if isinstance(fp, socket.socket):
            return fp
    return None


def describe_response(resp):
    """'GET http://host/path -> 503' or 'GET http://host/path failed: connection refused'."""
    if resp["error"] and resp["status"] is None:
        return "%s %s failed: %s" % (resp["method"], resp["url"], resp["error"])
    text = "%s %s -> %s" % (resp["method"], resp["url"], resp["status"])
    if resp["error"]:
        text += " (%s)" % resp["error"]
    return text


class HttpTarget(object):
    """What modules use: the validated base URL plus the request settings, secrets registered as no_log."""

    def __init__(self, module):
        self.module = module
        url = module.params.get("url")
        # P3Module registered these before validation; kept here to redact library messages.
        self.secrets = url_secrets(url)
        for name, value in (module.params.get("headers") or {}).items():
            if is_secret_header(name) and value:
                self.secrets.extend(header_secrets(value))
        register_secrets(module, self.secrets)
        try:
            if not url:
                raise P3Error("no application URL: set url (or P3_APP_URL)")
            self.base_url = check_url(url)
        except P3Error as e:
            module.fail_json(msg=e.msg)
        self.timeout = float(module.params.get("timeout") or 5.0)
        if self.timeout <= 0:
            module.fail_json(msg="timeout must be > 0, got %s" % self.timeout)
        self.headers = dict((str(k), str(v)) for k, v in (module.params.get("headers") or {}).items())
        self.validate_certs = module.params.get("validate_certs") is not False
        self.ca_path = module.params.get("ca_path") or None
        self._context = None
        if self.ca_path and self.base_url.lower().startswith("https://"):
            try:
                self._context = tls_context(self.base_url, self.validate_certs, self.ca_path)
            except P3Error as e:  # a bad input: fail in one line naming the file, before any request
                module.fail_json(msg="%s: %s" % (redact_url(self.base_url), e.msg))

    @property
    def context(self):
        if self._context is None:
            self._context = tls_context(self.base_url, self.validate_certs, self.ca_path)
        return self._context

    def url_for(self, path):
        url = join_url(self.base_url, path)
        if url != self.base_url:
            try:
                check_url(url, option="path")
            except P3Error as e:
                self.module.fail_json(msg=e.msg)
        return url

    def get(self, path, **kwargs):
        return request(self.url_for(path), method="GET", timeout=self.timeout, headers=self.headers,
                       validate_certs=self.validate_certs, secrets=self.secrets, context=self.context, **kwargs)

    def get_many(self, paths, **kwargs):
        """GET several paths in parallel (so a hanging server costs one timeout, not one per path)."""
        urls = [self.url_for(p) for p in paths]
        context = self.context

        def call(url):
            return lambda: request(url, method="GET", timeout=self.timeout, headers=self.headers,
                                   validate_certs=self.validate_certs, secrets=self.secrets, context=context, **kwargs)

        results, errors, dummy = run_parallel(dict((i, call(url)) for i, url in enumerate(urls)), name="http")
        for i in range(len(urls)):
            if i in errors:
                raise errors[i]  # as a single request() would
        return [results[i] for i in range(len(urls))]
