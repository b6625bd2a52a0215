"""Shared pieces of the benchmarks (and of the integration tests that need a Redis of their own, through
tests/integration/p3harness.throwaway_redis): a throwaway standalone redis-server on a free loopback port."""
import shutil
import socket
import subprocess
import tempfile
import time


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class StandaloneRedis(object):
    """redis-server without persistence in a temporary dir; .client is a redis-py client to it."""

    def __init__(self, prefix="bench-redis-", socket_timeout=60, decode_responses=False):
        import redis
        self.dir = tempfile.mkdtemp(prefix=prefix)
        self.port = free_port()
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.client = redis.Redis(port=self.port, socket_timeout=socket_timeout, decode_responses=decode_responses)
        for _ in range(100):
            try:
                self.client.ping()
                return
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start on port %d" % self.port)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
