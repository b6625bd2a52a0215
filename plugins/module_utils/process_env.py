# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Set one environment variable of a process-manager program (pure text transforms, unit-tested):
supervisor ``[program:x] environment=`` lines and systemd drop-in ``Environment=`` lines."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import re

from ansible_collections.p3.recovery.plugins.module_utils.common import P3Error

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")


def check_name(name):
    if not name or not _NAME.match(name):
        raise P3Error("name must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*), got %r" % name)
    return name


def parse_supervisor_env(text):
    """'A="1",B=two,C="x,y"' -> [(A, 1), (B, two), (C, x,y)] (supervisor's KEY="val" syntax, quotes optional)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t,\n":
            i += 1
        if i >= n:
            break
        eq = text.find("=", i)
        if eq < 0:
            raise P3Error("cannot parse supervisor environment near %r" % text[i:i + 40])
        key = text[i:eq].strip()
        i = eq + 1
        if i < n and text[i] in "\"'":
            q = text[i]
            end = text.find(q, i + 1)
            if end < 0:
                raise P3Error("unbalanced quote in supervisor environment for %s" % key)
            value = text[i + 1:end]
            i = end + 1
        else:
            end = text.find(",", i)
            end = n if end < 0 else end
            value = text[i:end].strip()
            i = end
        out.append((key, value))
    return out


def format_supervisor_env(pairs):
    parts = []
    for k, v in pairs:
        if '"' in v:
            raise P3Error("value of %s contains a double quote, which supervisor cannot express" % k)
        parts.append('%s="%s"' % (k, v))
    return ",".join(parts)


def set_supervisor_env(conf_text, program, name, value):
    """(new text, previous value or None). Raises P3Error when [program:<program>] is missing."""
    lines = conf_text.splitlines(True)
    header = "program:%s" % program
    start = None
    for idx, line in enumerate(lines):
        m = _SECTION.match(line)
        if m and m.group("name").strip() == header:
            start = idx
            break
    if start is None:
        raise P3Error("no [%s] section" % header)
    end = len(lines)
    for idx in range(start + 1, len(lines)):
        if _SECTION.match(lines[idx]):
            end = idx
            break
    env_idx = None
    for idx in range(start + 1, end):
        if re.match(r"^\s*environment\s*=", lines[idx]):
            env_idx = idx
            break
    if env_idx is None:
        new_line = "environment=%s\n" % format_supervisor_env([(name, value)])
        return "".join(lines[:start + 1] + [new_line] + lines[start + 1:]), None
    # continuation lines (indented) belong to the value
    last = env_idx
    while last + 1 < end and lines[last + 1][:1] in (" ", "\t") and lines[last + 1].strip():
        last += 1
    raw = "".join(lines[env_idx:last + 1])
    raw = raw.split("=", 1)[1]
    pairs = parse_supervisor_env(raw.strip())
    previous = None
    found = False
    new_pairs = []
    for k, v in pairs:
        if k == name:
            previous, found = v, True
            new_pairs.append((k, value))
        else:
            new_pairs.append((k, v))
    if not found:
        new_pairs.append((name, value))
    new_line = "environment=%s\n" % format_supervisor_env(new_pairs)
    return "".join(lines[:env_idx] + [new_line] + lines[last + 1:]), previous


def set_systemd_env(dropin_text, name, value):
    """(new drop-in text, previous value or None): one Environment="NAME=value" line per variable under [Service]."""
    if any(c in value for c in '"\\\n'):
        raise P3Error("value of %s contains a quote, backslash or newline" % name)
    lines = (dropin_text or "").splitlines()
    if not any(line.strip() == "[Service]" for line in lines):
        lines = ["[Service]"] + lines
    previous = None
    out = []
    done = False
    pat = re.compile(r'^\s*Environment\s*=\s*"?%s=(?P<v>[^"]*)"?\s*$' % re.escape(name))
    for line in lines:
        m = pat.match(line)
        if m:
            previous = m.group("v")
            if not done:
                out.append('Environment="%s=%s"' % (name, value))
                done = True
            continue
        out.append(line)
    if not done:
        idx = out.index("[Service]") + 1
        out.insert(idx, 'Environment="%s=%s"' % (name, value))
    return "\n".join(out) + "\n", previous
