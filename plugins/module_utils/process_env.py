# -*- coding: utf-8 -*-
# Copyright: (c) 2026, P3 Recovery maintainers
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Set one environment variable of a process-manager program (pure text transforms, unit-tested):
supervisor ``[program:x] environment=`` lines and systemd drop-in ``Environment=`` lines."""

from __future__ import absolute_import, division, print_function
__metaclass__ = type

import os
import re

from ansible_collections.p3.recovery.plugins.module_utils.common import MASK, P3Error, one_line

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SECTION = re.compile(r"^\s*\[(?P<name>[^\]]+)\]\s*$")


def check_name(name):
    if not name or not _NAME.match(name):
        raise P3Error("name must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*), got %r" % name)
    return name


def check_value(name, value):
    """Refuse what no backend can hold in one line: newline, carriage return, NUL (the message never quotes
    the value, which may be a credential)."""
    for ch, what in (("\n", "a newline"), ("\r", "a carriage return"), ("\x00", "a NUL byte")):
        if ch in value:
            raise P3Error("value of %s contains %s, which a process manager environment cannot hold" % (name, what))
    return value


def supervisor_escape(value):
    """supervisor expands %(name)s in every option: a literal % is written %%."""
    return value.replace("%", "%%")


def supervisor_unescape(raw):
    return raw.replace("%%", "%")


def mask_values(text, pairs):
    """text with every value of pairs (raw and unescaped) masked: error output of supervisor quotes the whole
    environment= line, and the other variables hold credentials."""
    text = str(text or "")
    values = set()
    for dummy, v in pairs:
        values.update(x for x in (v, supervisor_unescape(v)) if x and len(x) >= 3)
    for v in sorted(values, key=len, reverse=True):
        text = text.replace(v, MASK)
    return text


def check_supervisor_config(text, path, program, pairs):
    """Parse the program section of the candidate text with supervisor's own parser, as supervisord and
    `supervisorctl reread` will. Returns True when checked, False when the supervisor package is not
    importable here. Raises P3Error (values masked) when supervisor rejects it."""
    try:
        from supervisor.options import ServerOptions, UnhosedConfigParser
    except ImportError:
        return False
    opts = ServerOptions()
    opts.configfile = path
    opts.here = os.path.dirname(os.path.abspath(path))
    parser = UnhosedConfigParser()
    parser.expansions = opts.environ_expansions
    try:
        parser.read_string(text)
        opts.processes_from_section(parser, "program:%s" % program, program)
    except Exception as e:  # pylint: disable=broad-except
        # supervisor raises ValueError / configparser errors that quote the offending line
        raise P3Error("supervisor's parser rejects the new [program:%s]: %s" % (
            program, one_line(mask_values(e, pairs), 300)))
    return True


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
    """Raw (already %-escaped) values -> the environment= value."""
    parts = []
    for k, v in pairs:
        if '"' in v:
            raise P3Error("value of %s contains a double quote, which supervisor cannot express" % k)
        parts.append('%s="%s"' % (k, v))
    return ",".join(parts)


def _program_env(lines, program):
    """(section start, env line index or None, last env line index, the pairs) of [program:<program>]."""
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
    for idx in range(start + 1, end):
        if re.match(r"^\s*environment\s*=", lines[idx]):
            # continuation lines (indented) belong to the value
            last = idx
            while last + 1 < end and lines[last + 1][:1] in (" ", "\t") and lines[last + 1].strip():
                last += 1
            raw = "".join(lines[idx:last + 1]).split("=", 1)[1]
            return start, idx, last, parse_supervisor_env(raw.strip())
    return start, None, None, []


def supervisor_env_pairs(conf_text, program):
    """The (name, raw value) pairs of [program:<program>] environment= (empty when the section is missing)."""
    try:
        return _program_env(conf_text.splitlines(True), program)[3]
    except P3Error:
        return []


def set_supervisor_env(conf_text, program, name, value):
    """(new text, previous value or None). Raises P3Error when [program:<program>] is missing or the value cannot
    be written (newline, NUL, double quote). The value is %-escaped; other variables keep their text as is."""
    check_value(name, value)
    if '"' in value:
        raise P3Error("value of %s contains a double quote, which supervisor cannot express" % name)
    raw_value = supervisor_escape(value)
    lines = conf_text.splitlines(True)
    start, env_idx, last, pairs = _program_env(lines, program)
    if env_idx is None:
        new_line = "environment=%s\n" % format_supervisor_env([(name, raw_value)])
        return "".join(lines[:start + 1] + [new_line] + lines[start + 1:]), None
    previous = None
    found = False
    new_pairs = []
    for k, v in pairs:
        if k == name:
            previous, found = supervisor_unescape(v), True
            new_pairs.append((k, raw_value))
        else:
            new_pairs.append((k, v))
    if not found:
        new_pairs.append((name, raw_value))
    new_line = "environment=%s\n" % format_supervisor_env(new_pairs)
    return "".join(lines[:env_idx] + [new_line] + lines[last + 1:]), previous


def set_systemd_env(dropin_text, name, value):
    """(new drop-in text, previous value or None): one Environment="NAME=value" line per variable under [Service]."""
    check_value(name, value)
    if any(c in value for c in '"\\'):
        raise P3Error("value of %s contains a quote or backslash" % name)
    value = value.replace("%", "%%")  # systemd specifiers: a literal % is %%
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
            previous = m.group("v").replace("%%", "%")
            if not done:
                out.append('Environment="%s=%s"' % (name, value))
                done = True
            continue
        out.append(line)
    if not done:
        idx = out.index("[Service]") + 1
        out.insert(idx, 'Environment="%s=%s"' % (name, value))
    return "\n".join(out) + "\n", previous
