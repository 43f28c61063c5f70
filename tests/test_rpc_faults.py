"""The RPC layer (servicekit/rpc.py) when the connection under a call is cut:
the container lives, the call is answered, and the work is done once."""
import collections

import eventlet
from eventlet.event import Event
from nameko.containers import ServiceContainer
from nameko.standalone.rpc import ClusterRpcProxy

from servicekit.rpc import rpc
from tests.conftest import wait_until
from tests.support.tcp_proxy import CuttableProxy

RUNS = collections.Counter()
RELEASE = {}


class SlowService:
    name = "slow"

    @rpc
    def work(self, key: str) -> str:
        RUNS[key] += 1
        RELEASE[key].wait()
        return f"done {key}"


def test_a_call_whose_connection_is_cut_midway_is_answered_and_runs_once(vhost):
    proxy = CuttableProxy(5672)
    proxied = vhost.replace(":5672/", f":{proxy.port}/")
    container = ServiceContainer(SlowService, {"AMQP_URI": proxied, "max_workers": 4})
    container.start()
    try:
        with ClusterRpcProxy({"AMQP_URI": vhost}, timeout=60) as cluster:
            RELEASE["a"] = Event()
            reply = cluster.slow.work.call_async("a")
            wait_until(lambda: RUNS["a"] == 1, message="the first run")

            # the service loses its connection while the worker runs: the
            # broker puts the request back and delivers it again on reconnect
            proxy.cut()
            eventlet.sleep(0.5)
            proxy.restore()
            eventlet.sleep(2)  # time to reconnect and receive the request again
            RELEASE["a"].send(None)

            assert reply.result() == "done a"
            RELEASE["b"] = Event()
            RELEASE["b"].send(None)
            assert cluster.slow.work("b") == "done b"  # it still serves
        assert RUNS["a"] == 1, "the request ran twice"
        assert not container._died.ready(), "the container died"
    finally:
        container.kill()
        proxy.close()


def test_the_gateway_forgets_calls_nobody_waits_for_any_more(monkeypatch):
    from servicekit import rpc as reliable_rpc

    listener = reliable_rpc.ReplyListener()
    listener.get_reply_event("given-up")
    monkeypatch.setattr(reliable_rpc, "FORGET_UNANSWERED_SECONDS", 0.0)
    listener.get_reply_event("new")
    assert set(listener._reply_events) == {"new"}
