"""Secrets registered before argument validation (P3Module), redis_nodes credentials, malformed DSNs,
process_env escaping and supervisor's own parser."""
import json

import pytest

from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes

from ansible_collections.p3.recovery.plugins.module_utils import common as c
from ansible_collections.p3.recovery.plugins.module_utils import postgres_client as pc
from ansible_collections.p3.recovery.plugins.module_utils import process_env as pe
from ansible_collections.p3.recovery.plugins.module_utils import redis_client as rc


@pytest.mark.parametrize("text,secret", [
    ("redis://u:p@ss-word1@host:1/0", "p@ss-word1"),           # unencoded @
    ("postgresql://u:pa ss-word2@h/db", "pa ss-word2"),         # unquoted space
    ("host=h password=p@ss word3 dbname=x", "p@ss word3"),     # keyword DSN, unquoted space
    ("host=h password='a b\\'c-4' dbname=x", "a b'c-4"),       # quoted, escaped quote
    ("https://h/?password=q%20w-5", "q w-5"),
    ("a redis://:pw-one@h1 b redis://x:pw-two@h2", "pw-two"),
])
def test_text_secrets_finds_malformed_passwords(text, secret):
    found = c.text_secrets(text)
    assert secret in found
    for piece in secret.replace("@", " ").split():
        if len(piece) >= 3:
            assert piece in found  # a library may quote only a fragment


def test_text_secrets_does_not_take_the_host_for_a_password():
    assert c.text_secrets("redis://u:secret@host:6379/0?x=a@b") == ["secret"]
    assert c.text_secrets("http://127.0.0.1:5000/health") == []


def test_params_secrets_headers_nodes_env_fallbacks_and_provider_keys():
    spec = dict(redis_url=dict(type="str", fallback=c.env("REDIS_URL")),
                dsn=dict(type="str", no_log=True, fallback=c.env("DATABASE_URL")))
    params = dict(headers={"Authorization": "Basic dXNlcjpodW50ZXIy", "X-Trace": "abc"},
                  redis_nodes=["redis://u:nodepw1@h:1"], rpc_url="https://rpc.example/v3/0123456789abcdef0123",
                  other=5)
    env = dict(REDIS_URL="redis://:envpw11@h:1", DATABASE_URL="host=h password=envdb22")
    found = c.params_secrets(params, spec, environ=env)
    for s in ("Basic dXNlcjpodW50ZXIy", "hunter2", "nodepw1", "0123456789abcdef0123", "envpw11", "envdb22",
              "host=h password=envdb22"):
        assert s in found, s
    assert "abc" not in found


def run_module(monkeypatch, capsys, args, spec):
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args})))
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy", raising=False)
    with pytest.raises(SystemExit):
        module = c.P3Module(argument_spec=spec, supports_check_mode=True)
        module.fail_json(msg="late failure with %s" % module.params["redis_nodes"])
    return capsys.readouterr().out


def test_p3module_masks_secrets_when_validation_fails(monkeypatch, capsys):
    """A wrong type fails inside AnsibleModule.__init__, before any module code: the invocation is masked."""
    spec = dict(rc.REDIS_ARGUMENT_SPEC)
    out = run_module(monkeypatch, capsys, dict(redis_url="redis://u:Val1dSecret@h:1",
                                               redis_nodes=["redis://u:N0deSecret@h:2"],
                                               redis_socket_timeout="not-a-float"), spec)
    assert "not-a-float" in out or "float" in out
    assert "Val1dSecret" not in out and "N0deSecret" not in out


def test_p3module_masks_secrets_in_a_late_failure(monkeypatch, capsys):
    out = run_module(monkeypatch, capsys, dict(redis_nodes=["redis://u:N0deSecret@h:2"]), dict(rc.REDIS_ARGUMENT_SPEC))
    assert "late failure" in out and "N0deSecret" not in out


def params(**kw):
    p = dict((k, v.get("default")) for k, v in rc.REDIS_ARGUMENT_SPEC.items())
    p.update(kw)
    return p


def test_redis_nodes_credentials_are_used():
    s = rc.resolve_redis_settings(params(redis_nodes=["redis://acl:pw%40x@10.0.0.1:7001", "rediss://acl:pw%40x@h2:7002"]))
    assert s.username == "acl" and s.password == "pw@x" and s.tls is True
    assert s.seeds == [("10.0.0.1", 7001), ("h2", 7002)]
    # the explicit options still win
    s = rc.resolve_redis_settings(params(redis_nodes=["redis://acl:pw@h:1"], redis_password="other"))
    assert s.password == "other" and s.username == "acl"
    with pytest.raises(c.P3Error) as e:
        rc.resolve_redis_settings(params(redis_nodes=["redis://a:one1@h:1", "redis://a:two2@h:2"]))
    assert "different credentials" in e.value.msg and "one1" not in e.value.msg


def test_malformed_keyword_dsn_error_quotes_no_fragment():
    dsn = "host=127.0.0.1 dbname=p3 user=x password=p@ss wordfragment"
    with pytest.raises(c.P3Error) as e:
        pc.parse_dsn(dsn)
    assert e.value.msg.startswith("invalid dsn")
    for fragment in ("wordfragment", "p@ss"):
        assert fragment not in e.value.msg


def test_process_env_escapes_percent_and_refuses_newlines():
    conf = '[program:app]\ncommand=x\nenvironment=DATABASE_URL="postgresql://u:topsecret@h/db",PCT="10%%"\n'
    new, prev = pe.set_supervisor_env(conf, "app", "LIMIT", "50%")
    assert 'LIMIT="50%%"' in new and prev is None
    again, prev = pe.set_supervisor_env(new, "app", "LIMIT", "50%")
    assert again == new and prev == "50%"
    assert pe.set_supervisor_env(conf, "app", "PCT", "10%")[0] == conf  # already set: no change
    for bad in ("a\nb", "a\rb", "a\x00b"):
        with pytest.raises(c.P3Error) as e:
            pe.set_supervisor_env(conf, "app", "LIMIT", bad)
        assert "LIMIT" in e.value.msg and "topsecret" not in e.value.msg and bad not in e.value.msg
    text, prev = pe.set_systemd_env("", "LIMIT", "50%")
    assert 'Environment="LIMIT=50%%"' in text
    assert pe.set_systemd_env(text, "LIMIT", "50%")[1] == "50%"


def test_check_supervisor_config_uses_supervisors_parser_and_masks_values(tmp_path):
    path = str(tmp_path / "p3.conf")
    good = '[program:app]\ncommand=/bin/true\nenvironment=A="1",SECRET_URL="postgresql://u:topsecret@h/db",B="50%%"\n'
    assert pe.check_supervisor_config(good, path, "app", pe.supervisor_env_pairs(good, "app")) is True
    bad = good.replace('B="50%%"', 'B="50%"')  # what the old code wrote
    with pytest.raises(c.P3Error) as e:
        pe.check_supervisor_config(bad, path, "app", pe.supervisor_env_pairs(bad, "app"))
    assert "parser rejects" in e.value.msg and "topsecret" not in e.value.msg and "\n" not in e.value.msg
