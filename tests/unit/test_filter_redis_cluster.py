"""plugins/filter/redis_cluster.py: the redis_cluster role's decision (golden cases from the Jinja it replaced)."""
import pytest

from ansible_collections.p3.recovery.plugins.filter.redis_cluster import FilterModule, redis_decision

ALL_ON = dict(failover=True, failover_master="", repair_slots=True, rejoin=True, forget_failed=True)
SEEN = dict(reason="1 failed master", next_actions=["failover", "slots", "rejoin", "forget"])


def test_every_next_action_allowed():
    d = redis_decision(SEEN, ALL_ON)
    assert (d["failover"], d["slots"], d["rejoin"], d["forget"]) == (True, True, True, True)
    assert d["off"] == [] and d["decided"] == "failover, slots, rejoin, forget"
    assert d["why"] == "1 failed master -> failover, slots, rejoin, forget"


def test_nothing_to_do():
    d = redis_decision(dict(reason="cluster ok", next_actions=[]), ALL_ON)
    assert not any(d[k] for k in ("failover", "slots", "rejoin", "forget"))
    assert d["why"] == "cluster ok -> nothing to do" and d["decided"] == "nothing to do"


def test_a_switch_off_is_named_and_forget_says_how_to_turn_it_on():
    d = redis_decision(SEEN, dict(ALL_ON, rejoin=False, forget_failed=False))
    assert (d["failover"], d["slots"], d["rejoin"], d["forget"]) == (True, True, False, False)
    assert d["off"] == ["rejoin", "forget: set p3_redis_forget_failed"]
    assert d["decided"] == "failover, slots, rejoin, forget (off: rejoin, forget: set p3_redis_forget_failed)"


def test_every_switch_off():
    d = redis_decision(SEEN, dict(failover=False, repair_slots=False, rejoin=False, forget_failed=False))
    assert not any(d[k] for k in ("failover", "slots", "rejoin", "forget"))
    assert d["off"] == ["failover", "slots", "rejoin", "forget: set p3_redis_forget_failed"]


def test_an_action_not_asked_for_is_not_taken_even_when_on():
    d = redis_decision(dict(reason="r", next_actions=["slots"]), ALL_ON)
    assert (d["failover"], d["slots"], d["rejoin"], d["forget"]) == (False, True, False, False)


@pytest.mark.parametrize("switch,want", [(True, True), (False, False)])
def test_an_explicit_failover_master_is_a_failover_when_failover_is_on(switch, want):
    d = redis_decision(dict(reason="r", next_actions=[]), dict(ALL_ON, failover=switch, failover_master="10.0.0.1:7000"))
    assert d["failover"] is want
    # the topology asked for nothing: nothing is listed as off
    assert d["off"] == [] and d["decided"] == "nothing to do"


def test_switches_as_ansible_booleans():
    # the Jinja it replaced applied | bool: 'yes' and 1 are true, 'false' and 'no' are false
    d = redis_decision(SEEN, dict(failover="yes", repair_slots="false", rejoin=1, forget_failed="no"))
    assert (d["failover"], d["slots"], d["rejoin"], d["forget"]) == (True, False, True, False)


def test_registered():
    assert FilterModule().filters()["redis_decision"] is redis_decision


def test_reshape_follows_its_own_switch_and_says_how_to_turn_it_on():
    seen = dict(reason="2 masters, designed 3", next_actions=["reshape"])
    assert redis_decision(seen, dict(ALL_ON, reshape=True))["reshape"] is True
    d = redis_decision(seen, ALL_ON)  # p3_redis_reshape defaults to false: off unless asked
    assert d["reshape"] is False and d["off"] == ["reshape: set p3_redis_reshape"]
    assert d["decided"] == "reshape (off: reshape: set p3_redis_reshape)"
