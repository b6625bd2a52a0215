"""bullmq retry (issue 14 §4): a page error after earlier pages moved jobs still reports changed and what moved.
Real Redis (a throwaway redis-server), BullMQ's own scripts."""
import json
import shutil

import pytest

from p3harness import ensure_collection_importable, throwaway_redis

ensure_collection_importable()

from ansible_collections.p3.recovery.plugins.module_utils.bullmq import BullQueue  # noqa: E402
from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error  # noqa: E402
from ansible_collections.p3.recovery.plugins.module_utils.redis_client import RedisSettings  # noqa: E402

pytestmark = pytest.mark.skipif(not shutil.which("redis-server"), reason="redis-server not installed")
BASE = "bull:anchor:"
NOW = 1700000000000


@pytest.fixture
def server():
    redis_server = throwaway_redis(prefix="p3test-bullmq-partial-", decode_responses=True)
    yield redis_server.port, redis_server.client
    redis_server.stop()


def test_a_page_error_after_earlier_pages_moved_still_reports_changed(server):
    port, client = server
    pipe = client.pipeline(transaction=False)
    for i in range(300):
        jid = "job-%d" % i
        fin = NOW - 60000 + i
        pipe.hset(BASE + jid, mapping={"name": "anchor", "data": json.dumps({"outboxId": jid}), "opts": "{}",
                                       "timestamp": fin - 2, "processedOn": fin - 1, "finishedOn": fin,
                                       "failedReason": "boom"})
        pipe.zadd(BASE + "failed", {jid: fin})
    pipe.execute()
    # a job of the third page is not a hash: BullMQ's script fails on that page (WRONGTYPE)
    client.delete(BASE + "job-250")
    client.set(BASE + "job-250", "not a hash")
    q = BullQueue(RedisSettings([("127.0.0.1", port)], socket_timeout=30), "anchor", "bull").connect()
    try:
        with pytest.raises(P3Error) as err:
            q.retry(clock=lambda: NOW, max_jobs=10 ** 6, page_size=100, validate=False)
    finally:
        q.close()
    moved = client.llen(BASE + "wait")
    assert moved >= 100  # real state: earlier pages did move
    assert err.value.details["changed"] is True
    assert err.value.details["retried"] == moved
    assert "after moving %d" % moved in err.value.msg
