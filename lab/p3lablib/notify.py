"""The lab's notification receiver: a Slack-compatible webhook on 127.0.0.1:base+59 that records every POST as one
JSON line (received_at, path, body) in $P3LAB_DIR/notify/notifications.jsonl - what the EDA loop
(p3.recovery.eda_notify) told humans, for tests. Supervisor program `notify`; run it alone:
    .venv/bin/python lab/p3lablib/notify.py PORT FILE
GET /notifications returns the recorded lines as a JSON list; DELETE /notifications empties the file."""
import datetime
import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PROGRAM = "notify"
OFFSET = 59
MAX_BODY = 1024 * 1024


def port(lab):
    return lab.base + OFFSET


def url(lab):
    return "http://127.0.0.1:%d/hooks/p3" % port(lab)


def records_file(lab):
    return os.path.join(lab.dir, "notify", "notifications.jsonl")


def read_records(path):
    """The recorded notifications, oldest first ([] when none)."""
    try:
        with open(path) as fh:
            return [json.loads(line) for line in fh if line.strip()]
    except FileNotFoundError:
        return []


def supervisor_section(lab, program_section, env_line, python):
    """The [program:notify] section (program_section is supervisor.program_section)."""
    path = records_file(lab)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return program_section(PROGRAM, "%s %s %d %s" % (python, os.path.abspath(__file__), port(lab), path),
                           os.path.dirname(path), env_line, os.path.join(lab.log_dir, "notify.log"),
                           autorestart=True, startretries=1000, log_maxbytes="5MB")


def make_server(listen_port, path):
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self, status, data):
            body = json.dumps(data).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return self._reply(413, {"error": "too large"})
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw or b"null")
            except ValueError:
                return self._reply(400, {"error": "not JSON"})
            if not isinstance(body, dict) or not body.get("text"):
                return self._reply(400, {"error": "no text (Slack-compatible JSON expected)"})
            rec = {"received_at": datetime.datetime.now(datetime.timezone.utc).isoformat(), "path": self.path,
                   "body": body}
            with lock, open(path, "a") as fh:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
            return self._reply(200, {"ok": True})

        def do_GET(self):  # noqa: N802
            if self.path.rstrip("/") == "/notifications":
                with lock:
                    return self._reply(200, read_records(path))
            return self._reply(200 if self.path == "/healthz" else 404, {"ok": self.path == "/healthz"})

        def do_DELETE(self):  # noqa: N802
            with lock:
                open(path, "w").close()
            return self._reply(200, {"ok": True})

        def log_message(self, fmt, *args):
            sys.stdout.write("%s %s\n" % (self.address_string(), fmt % args))
            sys.stdout.flush()

    return ThreadingHTTPServer(("127.0.0.1", listen_port), Handler)


def main(argv):
    listen_port, path = int(argv[1]), argv[2]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    server = make_server(listen_port, path)
    print("notify receiver on 127.0.0.1:%d -> %s" % (listen_port, path), flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main(sys.argv)
