#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function
__metaclass__ = type

DOCUMENTATION = r"""
module: quick_diagnostics
short_description: Run the runbook's diagnostics (app, PostgreSQL, Redis, metrics, sessions, anchor, wallet) concurrently
version_added: 0.1.0
description:
  - Runs the probes of M(p3.recovery.app_probe), M(p3.recovery.postgres_probe), M(p3.recovery.redis_probe),
    M(p3.recovery.metrics_probe), M(p3.recovery.session_handshake_probe), M(p3.recovery.session_auth_probe),
    M(p3.recovery.session_census), M(p3.recovery.bullmq_probe) and M(p3.recovery.chain_probe) at the same time, in
    one module process, and returns each probe's result as that module returns it, under the probe's name.
  - The signals the runbook's incident table needs beyond the five quick diagnostics - can anyone log in (the
    handshake), the 401 rate, corrupt sessions, the anchor backlog and whether any worker serves the anchor queue,
    the anchor wallet's balance and the long-running statements - so a triage can tell every scenario apart.
  - The same code runs in both places (the probes live in the collection's module_utils); this module exists for
    speed at 3 a.m. - one task instead of four, and the slowest probe's time instead of the sum of all (a
    hanging endpoint costs one timeout, not one per probe). Use the one-probe modules for anything else.
  - Read-only. Bad input for one probe (a malformed URL or DSN, a missing library) makes that probe unhealthy
    with the cause in its RV(reason) and C(error=true); the other probes still run and report.
  - Healthy when every probe that ran is healthy.
author:
  - P3 Recovery maintainers (@p3-protocol)
extends_documentation_fragment:
  - p3.recovery.http_api
  - p3.recovery.postgres
  - p3.recovery.redis
  - p3.recovery.ethereum
  - p3.recovery.sessions
  - p3.recovery.probe
  - p3.recovery.attributes
  - p3.recovery.attributes.check_full_diff_none
requirements:
  - redis (Python library, for the C(redis) probe)
  - psycopg2 (Python library, for the C(postgres) probe)
  - prometheus-client (Python library, for the C(metrics) and C(auth) probes)
  - eth-account (Python library, part of web3, for the C(mesh) probe)
options:
  probes:
    description:
      - Which probes to run. Each one's result is returned under its name.
      - C(handshake) POSTs one handshake (as M(p3.recovery.session_handshake_probe), which creates one session with
        the app's TTL); C(auth) reads the 401 rate from the metrics; C(sessions) walks the session keyspace of every
        master (as M(p3.recovery.session_census)); C(anchor) reads the anchor queue and its workers' connections
        (as M(p3.recovery.bullmq_probe)); C(wallet) reads the chain and the anchor wallet (as
        M(p3.recovery.chain_probe); a pending transaction is called stuck only when it is still pending 2 s later,
        not when one read finds the worker's transaction in flight); C(mesh) uses the app's global mesh relay as a
        peer does (as
        M(p3.recovery.mesh_peers_probe) with O(mesh_relay_path) - a throwaway node registered, one message relayed
        to it and read back, the node unregistered).
    type: list
    elements: str
    choices: [app, postgres, redis, metrics, handshake, auth, sessions, anchor, wallet, mesh]
    default: [app, postgres, redis, metrics]
  health_path:
    description: Path of the health endpoint (C(app) probe; as M(p3.recovery.app_probe)).
    type: str
    default: /health
  pulse_path:
    description: Path of the pulse status endpoint; empty to skip the pulse check (C(app) probe).
    type: str
    default: /pulse/status
  min_peers:
    description: Minimum mesh peers the pulse status must report (C(app) probe).
    type: int
    default: 1
  max_usage_pct:
    description: Connection usage (percent of C(max_connections)) at or above which PostgreSQL is unhealthy
      (C(postgres) probe; as M(p3.recovery.postgres_probe)).
    type: float
    default: 80
  slow_query_seconds:
    description:
      - Age from which a running statement is slow (C(postgres) probe; RV(postgres.slow_queries)); the runbook's
        long-running queries (its terminate step uses 5 minutes). Unset skips the check.
    type: float
  metrics_path:
    description: Path of the Prometheus metrics endpoint (C(metrics) and C(auth) probes).
    type: str
    default: /metrics
  required_metrics:
    description:
      - Metric names that must be present (C(metrics) probe; the O(p3.recovery.metrics_probe#module:required)
        option of M(p3.recovery.metrics_probe)).
    type: list
    elements: str
    default: []
  handshake_path:
    description: Path of the session handshake (C(handshake) probe; C(/api/protocol/v2/session/handshake) on P3 as coded).
    type: str
    default: /api/protocol/session/handshake
  handshake_body:
    description: JSON body of the handshake (C(handshake) probe).
    type: dict
    default: {"deviceId": "p3-recovery-probe", "capabilities": {"encoding": ["json"]}}
  handshake_session_path:
    description: Path to read the new session back, with C({id}); empty skips the read-back (C(handshake) probe).
    type: str
    default: ""
  handshake_max_latency_ms:
    description: Slowest handshake that counts as healthy (C(handshake) probe).
    type: float
    default: 2000
  mesh_relay_path:
    description: Base path of the app's global mesh relay (C(mesh) probe; C(/api/mesh/global) on P3 as coded).
    type: str
    default: /api/mesh/global
  auth_failures_metric:
    description: Counter of 401 answers; empty counts O(auth_requests_metric) samples with C(status="401")
      (C(auth) probe).
    type: str
    default: p3_auth_failures_total
  auth_requests_metric:
    description: Counter of all requests (C(auth) probe).
    type: str
    default: api_requests_total
  max_auth_failure_pct:
    description: Highest 401 rate (percent) that counts as healthy (C(auth) probe; the runbook's alert
      C(session_auth_failure_rate), C(error_rate > 5%)).
    type: float
    default: 5
  auth_window_seconds:
    description:
      - The C(auth) probe scrapes the metrics twice, this many seconds apart, and judges the 401s among the requests
        in between (no request in the window is healthy). V(0) judges the counters' totals since the app started,
        which stay red after an incident until the app restarts. At most 60.
    type: float
    default: 0
  max_corrupt_sessions:
    description: Most corrupt sessions that count as healthy (C(sessions) probe).
    type: int
    default: 0
  queue:
    description: Name of the anchor queue (C(anchor) probe; C(anchor-batch:us) on P3 as coded).
    type: str
    default: anchor
  prefix:
    description: BullMQ key prefix of the anchor queue (C(anchor) probe; hash-tagged on a cluster, e.g. C({bull})).
    type: str
    default: bull
  max_waiting:
    description: Most waiting anchor jobs that count as healthy (C(anchor) probe; the runbook's C(queue_depth > 1000)).
    type: int
    default: 1000
  max_failed:
    description: Most failed anchor jobs that count as healthy (C(anchor) probe).
    type: int
    default: 0
  max_wait_age_seconds:
    description: Unhealthy when the oldest waiting anchor job is older than this - the queue does not drain
      (C(anchor) probe). Not checked when unset.
    type: float
  stuck_wait_seconds:
    description: The anchor worker counts as stuck (RV(anchor.worker) unhealthy) when a job has waited longer than
      this while a worker is connected and no job is active (C(anchor) probe). Not checked when unset. A worker whose
      blocking connection has commands queued behind its blocking call (C(CLIENT LIST) flag C(b) and C(qbuf) > 0 -
      its client gave up on it, so new jobs are missed; P3's worker after idling) counts as stuck regardless.
    type: float
  wallet:
    description:
      - Address of the anchor wallet (C(wallet) probe). If not set, the environment variable E(ANCHOR_WALLET) is
        used; without it only the chain is probed.
    type: str
  expected_chain_id:
    description: Unhealthy when the RPC serves another chain (C(wallet) probe).
    type: int
  low_threshold_wei:
    description: Wallet balance below this is C(low), unhealthy (C(wallet) probe). Default 0.1 ETH.
    type: int
    default: 100000000000000000
  critical_threshold_wei:
    description: Wallet balance below this is C(critical) (C(wallet) probe). Default 0.05 ETH.
    type: int
    default: 50000000000000000
notes:
  - O(timeout) bounds each HTTP request, O(connect_timeout) the PostgreSQL connection,
    O(redis_socket_timeout)/O(redis_connect_timeout) each Redis call and O(rpc_timeout) each JSON-RPC call, as in
    the one-probe modules; the whole run has one deadline (four times the longest of them plus 5 s, plus
    O(auth_window_seconds)), after which a probe that has not finished is reported unhealthy as late.
  - The C(anchor) result carries two verdicts - its own (the backlog - waiting, failed, oldest, paused, stalled)
    and RV(anchor.worker), whether any worker serves the queue (BullMQ's C(getWorkers) - connections named by
    C(CLIENT SETNAME) C(<prefix>:<base64 of the queue>) or C(<prefix>:<queue>), with an optional C(:w:<name>)). A
    queue without a worker is unhealthy whether or not jobs wait - P3 as coded with its lockfile's BullMQ has none.
  - The module is in the C(http), C(postgres), C(redis) and C(ethereum) action groups, so C(module_defaults) for any of them apply.
seealso:
  - module: p3.recovery.app_probe
  - module: p3.recovery.postgres_probe
  - module: p3.recovery.redis_probe
  - module: p3.recovery.metrics_probe
  - module: p3.recovery.session_handshake_probe
  - module: p3.recovery.session_auth_probe
  - module: p3.recovery.session_census
  - module: p3.recovery.bullmq_probe
  - module: p3.recovery.chain_probe
"""

EXAMPLES = r"""
- name: Quick diagnostics of the lab
  p3.recovery.quick_diagnostics:
    url: http://127.0.0.1:17030
    dsn: "{{ p3_database_url }}"
    redis_nodes: "{{ p3_redis_nodes }}"
    redis_password: "{{ p3_redis_password }}"
    required_metrics: [api_requests_total, p3_mesh_peers]
  register: diag

- name: Name what is unhealthy
  ansible.builtin.debug:
    msg: "{{ diag.verdicts | rejectattr('healthy') | map(attribute='reason') }}"

- name: Every signal of the runbook's scenarios (what the diagnose role runs), P3 as coded
  p3.recovery.quick_diagnostics:
    probes: [app, postgres, redis, metrics, handshake, auth, sessions, anchor, wallet]
    health_path: /api/system/health
    pulse_path: /api/pulse/status
    handshake_path: /api/protocol/v2/session/handshake
    handshake_body: {clientId: p3-recovery-probe, capabilities: {encodings: [json]}}
    auth_failures_metric: ""
    auth_window_seconds: 3
    slow_query_seconds: 300
    queue: "anchor-batch:us"
    prefix: bull
    max_wait_age_seconds: 60
    rpc_url: "{{ p3_rpc_url }}"
    wallet: "{{ p3_anchor_wallet }}"
  register: diag

- name: Name the anchor worker's absence
  ansible.builtin.debug:
    msg: "{{ diag.anchor.worker.reason }}"
  when: not diag.anchor.worker.healthy

- name: Only the database and Redis, failing the task when either is unhealthy
  p3.recovery.quick_diagnostics:
    probes: [postgres, redis]
    fail_on_unhealthy: true
"""

RETURN = r"""
healthy:
  description: Every probe that ran is healthy.
  returned: always
  type: bool
  sample: false
reason:
  description: One line naming each unhealthy probe and its reason, or that all are healthy.
  returned: always
  type: str
  sample: "1 of 4 probes unhealthy - redis: node 127.0.0.1:17001 unreachable (connection refused)"
verdicts:
  description: One entry per probe that ran, in the order of O(probes).
  returned: always
  type: list
  elements: dict
  contains:
    probe:
      description: The probe name (one of O(probes)).
      type: str
    module:
      description: The module whose result this is (for example C(p3.recovery.redis_probe)).
      type: str
    healthy:
      description: The probe's verdict.
      type: bool
    reason:
      description: The probe's one-line reason.
      type: str
    degraded:
      description: Only when the probe is healthy but short of redundancy (C(redis) - every slot served while a
        node the cluster judges down owns no slot); the C(degraded) list of M(p3.recovery.redis_probe).
      type: list
      elements: dict
      returned: when degraded
app:
  description: The result of M(p3.recovery.app_probe) (C(healthy), C(reason), C(health), C(pulse)); see that module.
  returned: when C(app) is in O(probes)
  type: dict
postgres:
  description: The result of M(p3.recovery.postgres_probe) (C(healthy), C(reason), C(connections), ...); see that
    module. With C(error=true) when its input was rejected.
  returned: when C(postgres) is in O(probes)
  type: dict
  contains:
    slow_queries:
      description: With O(slow_query_seconds) - C(healthy) (no statement running that long), C(reason),
        C(threshold_seconds), C(count) and C(queries) (the oldest ten, as in M(p3.recovery.postgres_activity)).
      type: dict
      returned: when O(slow_query_seconds) is set
redis:
  description: The result of M(p3.recovery.redis_probe) (C(healthy), C(reason), C(nodes), C(cluster_state), ...);
    see that module.
  returned: when C(redis) is in O(probes)
  type: dict
metrics:
  description: The result of M(p3.recovery.metrics_probe) (C(healthy), C(reason), C(metrics), C(summary),
    C(missing)); see that module.
  returned: when C(metrics) is in O(probes)
  type: dict
handshake:
  description: The result of M(p3.recovery.session_handshake_probe) (C(healthy), C(reason), C(status),
    C(latency_ms), C(session_id), ...).
  returned: when C(handshake) is in O(probes)
  type: dict
auth:
  description: The result of M(p3.recovery.session_auth_probe) (C(healthy), C(reason), C(failures), C(requests),
    C(failure_pct)), over the counters' whole life.
  returned: when C(auth) is in O(probes)
  type: dict
sessions:
  description: The result of M(p3.recovery.session_census) (C(healthy), C(reason), C(keys), C(corrupt), C(by_reason), ...).
  returned: when C(sessions) is in O(probes)
  type: dict
anchor:
  description: The result of M(p3.recovery.bullmq_probe) without its worker requirement (C(healthy), C(reason),
    C(counts), C(waiting), C(worker_connections), ...), plus C(worker).
  returned: when C(anchor) is in O(probes)
  type: dict
  contains:
    worker:
      description: C(healthy) (a worker serves the queue and takes jobs; also when C(CLIENT LIST) is refused and
        presence is not known), C(reason) (C(anchor worker absent - queue <name> has no worker ...) or C(anchor worker
        stuck - ...), see O(stuck_wait_seconds)), C(worker_connections), C(stuck) (why the connected worker takes no
        job).
      type: dict
      returned: always
wallet:
  description: The result of M(p3.recovery.chain_probe) (C(healthy), C(reason), C(balance_wei), C(wallet_level), ...).
  returned: when C(wallet) is in O(probes)
  type: dict
mesh:
  description: The relay round trip of M(p3.recovery.mesh_peers_probe) (C(healthy), C(reason), C(relayed),
    C(received), C(unregistered), C(peers), C(latency_ms), ...).
  returned: when C(mesh) is in O(probes)
  type: dict
"""

from ansible.module_utils.basic import missing_required_lib

from ansible_collections.p3.recovery.plugins.module_utils.common import Deadline, P3Module, env
from ansible_collections.p3.recovery.plugins.module_utils.common import PROBE_ARGUMENT_SPEC, P3Error, exit_probe, probe_result
from ansible_collections.p3.recovery.plugins.module_utils.chain import check_address, check_thresholds
from ansible_collections.p3.recovery.plugins.module_utils import diagnostics as d
from ansible_collections.p3.recovery.plugins.module_utils.ethereum_client import ETHEREUM_ARGUMENT_SPEC, EthereumTarget
from ansible_collections.p3.recovery.plugins.module_utils.http_client import HTTP_ARGUMENT_SPEC, HttpTarget
from ansible_collections.p3.recovery.plugins.module_utils.mesh import relay_roundtrip
from ansible_collections.p3.recovery.plugins.module_utils import metrics as m
from ansible_collections.p3.recovery.plugins.module_utils.postgres_client import POSTGRES_ARGUMENT_SPEC, PostgresTarget
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import REDIS_ARGUMENT_SPEC, RedisTarget
from ansible_collections.p3.recovery.plugins.module_utils.sessions import SESSION_ARGUMENT_SPEC, census

PROBES = ("app", "postgres", "redis", "metrics", "handshake", "auth", "sessions", "anchor", "wallet", "mesh")
DEFAULT_PROBES = ["app", "postgres", "redis", "metrics"]
MODULES = dict(app="p3.recovery.app_probe", postgres="p3.recovery.postgres_probe", redis="p3.recovery.redis_probe",
               metrics="p3.recovery.metrics_probe", handshake="p3.recovery.session_handshake_probe",
               auth="p3.recovery.session_auth_probe", sessions="p3.recovery.session_census",
               anchor="p3.recovery.bullmq_probe", wallet="p3.recovery.chain_probe",
               mesh="p3.recovery.mesh_peers_probe")


def _need_prometheus():
    if not m.HAS_PROMETHEUS:
        raise P3Error(missing_required_lib("prometheus-client"))


def probe_functions(module, deadline=None):
    """{probe name: callable} for the selected probes, each building its own target on a ScopedModule. deadline
    (common.Deadline, the run's) bounds the waits a probe chooses to take (the wallet's confirming re-read)."""
    p = module.params
    scoped = d.ScopedModule(module)

    def app():
        return d.app_probe(HttpTarget(scoped), p["health_path"], p["pulse_path"], p["min_peers"])

    def postgres():
        d.check_usage_threshold(p["max_usage_pct"])
        if p["slow_query_seconds"] is not None and p["slow_query_seconds"] < 0:
            raise P3Error("slow_query_seconds must be >= 0, got %s" % p["slow_query_seconds"])
        return d.postgres_probe(PostgresTarget(scoped), p["max_usage_pct"], p["slow_query_seconds"])

    def redis():
        return d.redis_probe(RedisTarget(scoped))

    def metrics():
        _need_prometheus()
        return d.metrics_probe(HttpTarget(scoped), p["metrics_path"], p["required_metrics"])

    def handshake():
        if p["handshake_max_latency_ms"] <= 0:
            raise P3Error("handshake_max_latency_ms must be > 0")
        return d.handshake_probe(HttpTarget(scoped), p["handshake_path"], p["handshake_body"],
                                 session_path=p["handshake_session_path"], max_latency_ms=p["handshake_max_latency_ms"])

    def auth():
        _need_prometheus()
        if not p["auth_requests_metric"]:
            raise P3Error("auth_requests_metric must not be empty")
        if not 0 <= p["auth_window_seconds"] <= 60:
            raise P3Error("auth_window_seconds must be between 0 and 60, got %s" % p["auth_window_seconds"])
        return d.auth_rate_probe(HttpTarget(scoped), p["metrics_path"], p["auth_failures_metric"],
                                 p["auth_requests_metric"], window_seconds=p["auth_window_seconds"],
                                 max_failure_pct=p["max_auth_failure_pct"])

    def sessions():
        if p["max_corrupt_sessions"] < 0:
            raise P3Error("max_corrupt_sessions must be >= 0, got %s" % p["max_corrupt_sessions"])
        return d.census_verdict(census(RedisTarget(scoped).settings, p), p["max_corrupt_sessions"])

    def anchor():
        for name in ("max_waiting", "max_failed"):
            if p[name] < 0:
                raise P3Error("%s must be >= 0, got %s" % (name, p[name]))
        return d.anchor_probe(RedisTarget(scoped).settings, p["queue"], p["prefix"], p["max_waiting"], p["max_failed"],
                              p["max_wait_age_seconds"], stuck_wait_seconds=p["stuck_wait_seconds"])

    def wallet():
        if p["wallet"]:
            check_address(p["wallet"], "wallet")
        check_thresholds(p["low_threshold_wei"], p["critical_threshold_wei"])
        return d.wallet_probe(EthereumTarget(scoped).rpc, p["wallet"], p["expected_chain_id"], p["low_threshold_wei"],
                              p["critical_threshold_wei"], deadline=deadline)

    def mesh():
        return relay_roundtrip(HttpTarget(scoped), p["mesh_relay_path"])

    functions = dict(app=app, postgres=postgres, redis=redis, metrics=metrics, handshake=handshake, auth=auth,
                     sessions=sessions, anchor=anchor, wallet=wallet, mesh=mesh)
    selected = []
    for name in p["probes"]:
        if name not in selected:
            selected.append(name)
    return dict((name, functions[name]) for name in selected)


def main():
    argument_spec = dict(
        probes=dict(type="list", elements="str", choices=list(PROBES), default=list(DEFAULT_PROBES)),
        health_path=dict(type="str", default="/health"),
        pulse_path=dict(type="str", default="/pulse/status"),
        min_peers=dict(type="int", default=1),
        max_usage_pct=dict(type="float", default=80),
        slow_query_seconds=dict(type="float"),
        metrics_path=dict(type="str", default="/metrics"),
        required_metrics=dict(type="list", elements="str", default=[]),
        handshake_path=dict(type="str", default="/api/protocol/session/handshake"),
        handshake_body=dict(type="dict", default=d.HANDSHAKE_BODY),
        handshake_session_path=dict(type="str", default=""),
        handshake_max_latency_ms=dict(type="float", default=2000),
        mesh_relay_path=dict(type="str", default="/api/mesh/global"),
        auth_failures_metric=dict(type="str", default="p3_auth_failures_total"),
        auth_requests_metric=dict(type="str", default="api_requests_total"),
        max_auth_failure_pct=dict(type="float", default=5),
        auth_window_seconds=dict(type="float", default=0),
        max_corrupt_sessions=dict(type="int", default=0),
        queue=dict(type="str", default="anchor"),
        prefix=dict(type="str", default="bull"),
        max_waiting=dict(type="int", default=1000),
        max_failed=dict(type="int", default=0),
        max_wait_age_seconds=dict(type="float"),
        stuck_wait_seconds=dict(type="float"),
        wallet=dict(type="str", fallback=env("ANCHOR_WALLET")),
        expected_chain_id=dict(type="int"),
        low_threshold_wei=dict(type="int", default=10 ** 17),
        critical_threshold_wei=dict(type="int", default=5 * 10 ** 16),
    )
    argument_spec.update(HTTP_ARGUMENT_SPEC)
    argument_spec.update(POSTGRES_ARGUMENT_SPEC)
    argument_spec.update(REDIS_ARGUMENT_SPEC)
    argument_spec.update(ETHEREUM_ARGUMENT_SPEC)
    argument_spec.update(SESSION_ARGUMENT_SPEC)
    argument_spec.update(PROBE_ARGUMENT_SPEC)
    module = P3Module(argument_spec=argument_spec, supports_check_mode=True)
    p = module.params
    if not p["probes"]:
        module.fail_json(msg="probes is empty: name at least one of %s" % ", ".join(PROBES))
    # Each probe bounds its own waits; this is only a guard against one that would not.
    waits = [p["timeout"] or 5.0, p["connect_timeout"] or 5.0, (p["redis_connect_timeout"] or 2.0) + (p["redis_socket_timeout"] or 2.0),
             p["rpc_timeout"] or 5.0]
    window = p["auth_window_seconds"] if "auth" in p["probes"] and 0 < p["auth_window_seconds"] <= 60 else 0
    total = 4 * max(waits) + 5 + window
    results = d.run_probes(probe_functions(module, Deadline(total, name="quick_diagnostics")), deadline=total)
    verdicts = [dict(probe=name, module=MODULES[name], healthy=r["healthy"], reason=r["reason"]) for name, r in results.items()]
    for v in verdicts:
        if results[v["probe"]].get("degraded"):
            v["degraded"] = results[v["probe"]]["degraded"]
    result = probe_result(all(v["healthy"] for v in verdicts), d.summary_reason(results), verdicts=verdicts)
    result.update(results)
    exit_probe(module, result)


if __name__ == "__main__":
    main()
