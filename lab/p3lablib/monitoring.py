"""Real monitoring for the lab (`p3lab up --monitoring`, `p3lab monitoring-up|monitoring-down`; docs/monitoring.md).

Debian's Prometheus, Alertmanager, redis_exporter and postgres_exporter run as programs of the lab's supervisord,
loopback only, state in $P3LAB_DIR/monitoring/:
- prometheus (base+50): scrapes the app's /metrics (job `p3-app`, every app instance), every Redis node through the
  one redis_exporter's multi-target endpoint /scrape?target=redis://... (job `redis`, instance = the node) and
  PostgreSQL through postgres_exporter (job `postgres`); loads the rules `playbooks/export_alerts.yml` writes into
  monitoring/rules/ (exported with the lab's short settings: LAB_SETTINGS); sends alerts to Alertmanager.
- alertmanager (base+51, no HA cluster port): one group per alert (group_by: ['...']), send_resolved, to a webhook
  (default the lab's EDA source http://127.0.0.1:<base+57>/alerts) with `Authorization: Bearer <token>` read from
  a file (credentials_file; default monitoring/webhook.token, mode 0600, made once).
- redis_exporter (base+52) and postgres_exporter (base+58); passwords reach them through the environment
  (REDIS_PASSWORD, DATA_SOURCE_NAME), never a command line.
Remembered in $P3LAB_DIR/mode.json ("monitoring": {webhook_url, token_file}) so `up`/`heal` keep the programs.
"""
import json
import os
import secrets
import shutil
import subprocess
import time

from .common import REDIS_PASSWORD, REPO, VENV, LabError, http, listener_pids, listening_ports, owned_pids, \
    read_json, wait_until, write_json

PROGRAMS = ("prometheus", "alertmanager", "redis_exporter", "postgres_exporter")
BINARIES = {"prometheus": "prometheus", "alertmanager": "prometheus-alertmanager",
            "redis_exporter": "prometheus-redis-exporter", "postgres_exporter": "prometheus-postgres-exporter",
            "promtool": "promtool"}
APP_JOB, REDIS_JOB, PG_JOB = "p3-app", "redis", "postgres"
RULES_FILE = "p3-recovery.rules.yml"
# The lab's short settings (seconds, so tests wait seconds); the exported defaults stay production's (2m, 5m, 1m).
SCRAPE_INTERVAL, EVAL_INTERVAL = "1s", "1s"
LAB_SETTINGS = {"p3_alert_for": "5s", "p3_alert_down_for": "3s", "p3_alert_rate_window": "30s",
                "p3_alert_eval_interval": EVAL_INTERVAL}
ROUTE = {"group_wait": "1s", "group_interval": "2s", "repeat_interval": "1m"}


def binary(name):
    path = shutil.which(BINARIES[name]) or os.path.join("/usr/bin", BINARIES[name])
    if not os.access(path, os.X_OK):
        raise LabError("missing %s (apt-get install prometheus prometheus-alertmanager prometheus-redis-exporter "
                       "prometheus-postgres-exporter; see scripts/setup.sh) - needed by --monitoring" % BINARIES[name])
    return path


class Paths(object):
    def __init__(self, lab):
        self.dir = os.path.join(lab.dir, "monitoring")
        self.rules_dir = os.path.join(self.dir, "rules")
        self.rules = os.path.join(self.rules_dir, RULES_FILE)
        self.prom_conf = os.path.join(self.dir, "prometheus.yml")
        self.am_conf = os.path.join(self.dir, "alertmanager.yml")
        self.prom_data = os.path.join(self.dir, "prometheus-data")
        self.am_data = os.path.join(self.dir, "alertmanager-data")
        self.token = os.path.join(self.dir, "webhook.token")
        self.export_log = os.path.join(self.dir, "export.log")


def ports(lab):
    return {"prometheus": lab.base + 50, "alertmanager": lab.base + 51, "redis_exporter": lab.base + 52,
            "postgres_exporter": lab.base + 58, "eda": lab.base + 57}


def program_ports(lab):
    """The ports the monitoring programs listen on (not the EDA source's: the rulebook is not a lab program)."""
    p = ports(lab)
    return [p[name] for name in PROGRAMS]


def urls(lab):
    p = ports(lab)
    return {"prometheus": "http://127.0.0.1:%d" % p["prometheus"],
            "alertmanager": "http://127.0.0.1:%d" % p["alertmanager"],
            "redis_exporter": "http://127.0.0.1:%d" % p["redis_exporter"],
            "postgres_exporter": "http://127.0.0.1:%d" % p["postgres_exporter"],
            "eda_webhook": "http://127.0.0.1:%d/alerts" % p["eda"]}


def settings(lab):
    """The remembered monitoring settings ({} when monitoring is off)."""
    return (read_json(lab.mode_json, {}) or {}).get("monitoring") or {}


def enabled(lab):
    return bool(settings(lab))


def remember(lab, value):
    os.makedirs(lab.dir, exist_ok=True)
    mode = read_json(lab.mode_json, {}) or {}
    if value:
        mode["monitoring"] = value
    else:
        mode.pop("monitoring", None)
    write_json(lab.mode_json, mode)


def redis_targets(lab):
    if lab.upstream:
        return ["redis://127.0.0.1:%d" % lab.p3redis_port]
    return ["redis://127.0.0.1:%d" % p for p in lab.redis_ports]


def _yaml_list(items, indent):
    return "".join("\n%s- %s" % (" " * indent, '"%s"' % i) for i in items)


def prometheus_config(lab, paths):
    p = ports(lab)
    return """# p3lab: generated, do not edit (rewritten by `p3lab monitoring-up`)
global:
  scrape_interval: {scrape}
  scrape_timeout: {scrape}
  evaluation_interval: {evaluation}
rule_files:
  - "{rules_dir}/*.rules.yml"
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{am}"]
scrape_configs:
  - job_name: {app_job}
    metrics_path: /metrics
    static_configs:
      - targets:{app_targets}
  - job_name: {redis_job}
    metrics_path: /scrape
    static_configs:
      - targets:{redis_targets}
    relabel_configs:
      - source_labels: [__address__]
        target_label: __param_target
      - source_labels: [__param_target]
        target_label: instance
      - target_label: __address__
        replacement: 127.0.0.1:{redis_exporter}
  - job_name: {pg_job}
    scrape_interval: 2s
    scrape_timeout: 2s
    static_configs:
      - targets: ["127.0.0.1:{pg_exporter}"]
""".format(scrape=SCRAPE_INTERVAL, evaluation=EVAL_INTERVAL, rules_dir=paths.rules_dir, am=p["alertmanager"],
           app_job=APP_JOB, app_targets=_yaml_list(["127.0.0.1:%d" % port for port in lab.app_ports], 10),
           redis_job=REDIS_JOB, redis_targets=_yaml_list(redis_targets(lab), 10),
           redis_exporter=p["redis_exporter"], pg_job=PG_JOB, pg_exporter=p["postgres_exporter"])


def alertmanager_config(lab, conf):
    return """# p3lab: generated, do not edit (rewritten by `p3lab monitoring-up`)
route:
  receiver: p3-recovery
  group_by: ['...']
  group_wait: {group_wait}
  group_interval: {group_interval}
  repeat_interval: {repeat_interval}
receivers:
  - name: p3-recovery
    webhook_configs:
      - url: "{url}"
        send_resolved: true
        http_config:
          authorization:
            type: Bearer
            credentials_file: "{token}"
""".format(url=conf["webhook_url"], token=conf["token_file"], **ROUTE)


def _env_line(env):
    return ",".join('%s="%s"' % (k, v.replace("%", "%%")) for k, v in sorted(env.items()))


def program_sections(lab):
    """The [program:x] sections of supervisord.conf for the monitoring programs (empty when monitoring is off)."""
    from .supervisor import program_section

    conf = settings(lab)
    if not conf:
        return ""
    paths, p = Paths(lab), ports(lab)
    dsn = lab.admin_db_url + "?sslmode=disable"
    base_env = {"P3LAB_OWNER": lab.dir, "HOME": paths.dir}
    cmds = {
        "prometheus": ("%s --config.file=%s --storage.tsdb.path=%s --storage.tsdb.retention.time=6h "
                       "--web.listen-address=127.0.0.1:%d --web.enable-lifecycle"
                       % (binary("prometheus"), paths.prom_conf, paths.prom_data, p["prometheus"]), {}),
        "alertmanager": ("%s --config.file=%s --storage.path=%s --web.listen-address=127.0.0.1:%d "
                         "--cluster.listen-address="
                         % (binary("alertmanager"), paths.am_conf, paths.am_data, p["alertmanager"]), {}),
        "redis_exporter": ("%s -web.listen-address 127.0.0.1:%d"
                           % (binary("redis_exporter"), p["redis_exporter"]), {"REDIS_PASSWORD": REDIS_PASSWORD}),
        "postgres_exporter": ("%s --web.listen-address=127.0.0.1:%d"
                              % (binary("postgres_exporter"), p["postgres_exporter"]), {"DATA_SOURCE_NAME": dsn}),
    }
    text = ""
    for name in PROGRAMS:
        cmd, env = cmds[name]
        text += program_section(name, cmd, paths.dir, _env_line(dict(base_env, **env)),
                                os.path.join(lab.log_dir, "%s.log" % name), autorestart=True, startretries=5,
                                log_maxbytes="10MB")
    return text


def _write(path, text, mode=0o644):
    old = None
    if os.path.exists(path):
        with open(path) as fh:
            old = fh.read()
    if old == text:
        return False
    with open(path + ".tmp", "w") as fh:
        fh.write(text)
    os.chmod(path + ".tmp", mode)
    os.replace(path + ".tmp", path)
    return True


def token_file(paths, given=None):
    """The webhook's bearer token file: the given one (must exist and be non-empty), else monitoring/webhook.token,
    made once (mode 0600)."""
    if given:
        given = os.path.abspath(given)
        try:
            with open(given) as fh:
                ok = bool(fh.read().strip())
        except OSError as e:
            raise LabError("webhook token file %s: %s" % (given, e.strerror))
        if not ok:
            raise LabError("webhook token file %s is empty" % given)
        return given
    if not os.path.exists(paths.token):
        fd = os.open(paths.token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32) + "\n")
    return paths.token


def check_rules(path):
    """promtool check rules; LabError naming the file and promtool's first complaint when it refuses."""
    if not os.path.isfile(path):
        raise LabError("rules file %s does not exist" % path)
    proc = subprocess.run([binary("promtool"), "check", "rules", path], capture_output=True, text=True, timeout=60,
                          check=False)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + "\n" + proc.stdout).splitlines()
                 if ln.strip() and not ln.strip().startswith("Checking ")]
        cause = next((ln for ln in lines if "FAILED" not in ln), lines[0] if lines else "rc %d" % proc.returncode)
        raise LabError("rules file %s is refused by promtool: %s" % (path, cause.lstrip("- ")))
    return proc.stdout.strip().splitlines()[-1].strip() if proc.stdout.strip() else "ok"


def export_rules(lab, paths, timeout=180):
    """Write the rules with playbooks/export_alerts.yml (the lab's short settings) into monitoring/rules/."""
    os.makedirs(paths.rules_dir, exist_ok=True)
    bin_dir = os.path.join(VENV, "bin")
    cmd = [os.path.join(bin_dir, "ansible-playbook"), "-i", lab.inventory, os.path.join(REPO, "playbooks",
                                                                                          "export_alerts.yml"),
           "-e", "p3_alert_export_dir=%s" % paths.rules_dir]
    for k, v in sorted(LAB_SETTINGS.items()):
        cmd += ["-e", "%s=%s" % (k, v)]
    if lab.upstream:
        cmd += ["-e", "@" + os.path.join(REPO, "profiles", "p3-upstream.yml")]
    env = lab.child_env({"ANSIBLE_CONFIG": os.path.join(REPO, "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                         "P3_INCIDENT_DIR": os.path.join(paths.dir, "incidents"),
                         "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")})
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise LabError("export_alerts.yml did not finish within %d s (see %s)" % (timeout, paths.export_log))
    with open(paths.export_log, "w") as fh:
        fh.write(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise LabError("export_alerts.yml failed (rc %d; see %s)" % (proc.returncode, paths.export_log))
    return paths.rules


def preflight(lab):
    """The monitoring ports are free or ours."""
    from . import supervisor

    want = dict(zip(PROGRAMS, program_ports(lab)))
    busy = listening_ports()
    mine = set(owned_pids(lab))
    taken = [(n, p) for n, p in want.items() if p in busy and not supervisor.pid_of(lab, n)]
    if taken:
        owners = listener_pids([p for _, p in taken])
        foreign = [(n, p) for n, p in taken if owners.get(p) not in mine]
        if foreign:
            raise LabError("port%s in use by another process: %s" % ("s" if len(foreign) > 1 else "", ", ".join(
                "%d (needed by %s)" % (p, n) for n, p in foreign)))


def reload_prometheus(lab, timeout=10.0):
    code, body = http("POST", urls(lab)["prometheus"] + "/-/reload", timeout=timeout)
    if code != 200:
        raise LabError("prometheus %s refused the reload: %s %s" % (urls(lab)["prometheus"], code,
                                                                     str(body).strip().splitlines()[0][:300]
                                                                     if body else ""))


def rules_loaded(lab):
    """{alert name: state} of the rules Prometheus has loaded ({} when it does not answer)."""
    code, body = http("GET", urls(lab)["prometheus"] + "/api/v1/rules?type=alert", timeout=2)
    if code != 200 or not isinstance(body, dict):
        return {}
    return dict((r["name"], r.get("state")) for g in body["data"]["groups"] for r in g["rules"])


def targets(lab):
    """[{job, instance, health, error}] of Prometheus' active targets ([] when it does not answer)."""
    code, body = http("GET", urls(lab)["prometheus"] + "/api/v1/targets?state=active", timeout=2)
    if code != 200 or not isinstance(body, dict):
        return []
    return [{"job": t["labels"].get("job"), "instance": t["labels"].get("instance"), "health": t.get("health"),
             "error": t.get("lastError") or None} for t in body["data"]["activeTargets"]]


def alerts(lab):
    """{alertname: [alert]} as Prometheus has them now (/api/v1/alerts: pending and firing); None when it does not
    answer."""
    code, body = http("GET", urls(lab)["prometheus"] + "/api/v1/alerts", timeout=2)
    if code != 200 or not isinstance(body, dict):
        return None
    out = {}
    for a in body["data"]["alerts"]:
        out.setdefault(a["labels"]["alertname"], []).append(a)
    return out


def am_alerts(lab):
    """[alert] Alertmanager holds now (/api/v2/alerts: fingerprint, status.state, labels, startsAt); None when it
    does not answer."""
    code, body = http("GET", urls(lab)["alertmanager"] + "/api/v2/alerts", timeout=2)
    return body if code == 200 and isinstance(body, list) else None


def ready(lab):
    u = urls(lab)
    return (http("GET", u["prometheus"] + "/-/ready", timeout=2)[0] == 200
            and http("GET", u["alertmanager"] + "/-/ready", timeout=2)[0] == 200)


def up(lab, webhook_url=None, token=None, rules=None, export=True, timeout=60.0):
    """Start (or update) the monitoring programs and wait until Prometheus has loaded the rules and scraped every
    target once. rules: a rules file to load instead of exporting them (checked with promtool first)."""
    from . import supervisor

    for name in list(PROGRAMS) + ["promtool"]:
        binary(name)
    if not supervisor.running(lab):
        raise LabError("the lab is not up (run `p3lab up` first, or `p3lab up --monitoring`)")
    t0 = time.monotonic()
    paths = Paths(lab)
    for d in (paths.dir, paths.rules_dir, paths.prom_data, paths.am_data):
        os.makedirs(d, exist_ok=True)
    old = settings(lab)
    conf = {"webhook_url": webhook_url or old.get("webhook_url") or urls(lab)["eda_webhook"],
            "token_file": token_file(paths, token or old.get("token_file"))}
    preflight(lab)
    if rules:
        check_rules(os.path.abspath(rules))
        shutil.copyfile(os.path.abspath(rules), paths.rules + ".tmp")
        os.replace(paths.rules + ".tmp", paths.rules)
    elif export or not os.path.exists(paths.rules):
        export_rules(lab, paths)
    checked = check_rules(paths.rules)
    _write(paths.prom_conf, prometheus_config(lab, paths))
    _write(paths.am_conf, alertmanager_config(lab, conf))
    remember(lab, conf)
    supervisor.start(lab)  # rewrites supervisord.conf with the programs; `update` starts them
    for name in PROGRAMS:
        supervisor.ensure_program(lab, name)
    end = t0 + timeout
    if not wait_until(lambda: ready(lab), max(1.0, end - time.monotonic()), 0.2):
        raise LabError("prometheus/alertmanager not ready on %s (see %s)" % (
            ", ".join(urls(lab)[n] for n in ("prometheus", "alertmanager")), lab.log_dir))
    reload_prometheus(lab)  # the rules and config just written (a running Prometheus keeps its old ones)
    if not wait_until(lambda: len(rules_loaded(lab)) > 0, max(1.0, end - time.monotonic()), 0.2):
        raise LabError("prometheus %s has not loaded %s" % (urls(lab)["prometheus"], paths.rules))
    # an Alertmanager that was already running reads its config again
    http("POST", urls(lab)["alertmanager"] + "/-/reload", timeout=5)

    def scraped():
        t = targets(lab)
        return t and all(x["health"] != "unknown" for x in t)

    wait_until(scraped, max(1.0, end - time.monotonic()), 0.2)
    return {"seconds": round(time.monotonic() - t0, 1), "urls": urls(lab), "rules": paths.rules,
            "promtool": checked, "alerts": sorted(rules_loaded(lab)), "webhook_url": conf["webhook_url"],
            "token_file": conf["token_file"], "targets": targets(lab)}


def down(lab, purge=False):
    """Stop the monitoring programs (supervisord drops them) and forget the setting; purge deletes their state."""
    from . import supervisor

    was = enabled(lab)
    remember(lab, None)
    if supervisor.running(lab):
        supervisor.start(lab)  # conf without the programs: `update` stops and removes them
    paths = Paths(lab)
    if purge and os.path.isdir(paths.dir):
        shutil.rmtree(paths.dir)
    return {"monitoring": False, "was_enabled": was, "purged": purge}


def status(lab):
    """{program: {port, pid, up}} for `p3lab status` (empty when monitoring is off)."""
    from . import supervisor

    if not enabled(lab):
        return {}
    out = {}
    p, u = ports(lab), urls(lab)
    for name in PROGRAMS:
        path = {"prometheus": "/-/ready", "alertmanager": "/-/ready"}.get(name, "/metrics")
        out[name] = {"port": p[name], "pid": supervisor.pid_of(lab, name),
                     "up": http("GET", u[name] + path, timeout=1)[0] == 200}
    return out


JAVA_HOME = "/usr/lib/jvm/java-17-openjdk-amd64"
RULEBOOK = "p3.recovery.p3_recovery"


class Rulebook(object):
    """A real ansible-rulebook running the collection's shipped rulebook (docs/eda.md), its Alertmanager source on
    127.0.0.1:<base+57> (where the lab's Alertmanager posts) with the lab's webhook token. The inventory is the
    lab's plus `loop_vars` (a second file in one inventory directory; e.g. p3_alert_eda_allow, the guard's state
    file). State and the rulebook's log in `workdir`. Use as a context manager (the process is stopped on exit)."""

    def __init__(self, lab, workdir, loop_vars=None, timeout=90.0):
        self.lab, self.dir, self.timeout = lab, os.path.abspath(workdir), timeout
        self.loop_vars = dict(loop_vars or {})
        self.port = ports(lab)["eda"]
        self.log_path = os.path.join(self.dir, "rulebook.log")
        self.proc = None

    def start(self):
        inv = os.path.join(self.dir, "inventory")
        os.makedirs(inv, exist_ok=True)
        shutil.copyfile(self.lab.inventory, os.path.join(inv, "lab.yml"))
        with open(os.path.join(inv, "zz-loop.yml"), "w") as fh:
            json.dump({"all": {"vars": self.loop_vars}}, fh)  # JSON is YAML
        token = settings(self.lab).get("token_file")
        if not token:
            raise LabError("the lab's monitoring is off: `p3lab monitoring-up` first (the rulebook needs its token)")
        with open(os.path.join(self.dir, "vars.yml"), "w") as fh:
            json.dump({"p3_eda_host": "127.0.0.1", "p3_eda_port": self.port, "p3_eda_token_file": token}, fh)
        bin_dir = os.path.join(VENV, "bin")
        env = self.lab.child_env({"PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
                                  "JAVA_HOME": os.environ.get("JAVA_HOME") or JAVA_HOME,
                                  "ANSIBLE_CONFIG": os.path.join(REPO, "ansible.cfg"), "ANSIBLE_NOCOLOR": "1",
                                  "P3_INCIDENT_DIR": os.path.join(self.dir, "incidents")})
        env.pop("P3_EDA_TOKEN", None)
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen([os.path.join(bin_dir, "ansible-rulebook"), "-i", inv, "-r", RULEBOOK, "--vars",
                                      os.path.join(self.dir, "vars.yml")], cwd=REPO, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT)
        url = "http://127.0.0.1:%d/healthz" % self.port
        wait_until(lambda: self.proc.poll() is not None or http("GET", url, timeout=1)[0] == 200, self.timeout, 0.5)
        if self.proc.poll() is not None or http("GET", url, timeout=1)[0] != 200:
            self.stop()
            raise LabError("ansible-rulebook did not listen on %s within %d s (see %s)" % (url, self.timeout,
                                                                                          self.log_path))
        return self

    def log_tail(self, n=4000):
        with open(self.log_path) as fh:
            return fh.read()[-n:]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
