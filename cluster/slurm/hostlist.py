"""Slurm's compressed host lists (``node[1-3,7],gpu-[01-04]``) expanded in pure Python.

Slurm's own ``scontrol show hostnames`` needs a Slurm install and a subprocess; every task of a job
needs the first host (MASTER_ADDR), so this is done here, the same way on every rank.
"""

import re

# "prefix[ranges]rest": the first bracket group of a host expression.
_BRACKET = re.compile(r"^(?P<prefix>[^\[\]]*)\[(?P<ranges>[^\[\]]+)\](?P<rest>.*)$")


def expand_hostlist(hostlist: str) -> list[str]:
    """Every host name in a Slurm host list, in Slurm's order.

    >>> expand_hostlist("node[1-3,7],gpu-[01-02]")
    ['node1', 'node2', 'node3', 'node7', 'gpu-01', 'gpu-02']
    """
    hosts: list[str] = []
    for expression in _split_top_level(hostlist.strip()):
        hosts.extend(_expand_expression(expression))
    return hosts


def _split_top_level(hostlist: str) -> list[str]:
    """Split on commas that are not inside brackets."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in hostlist:
        if char == "[":
            depth += 1
        elif char == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in host list {hostlist!r}")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth != 0:
        raise ValueError(f"unbalanced '[' in host list {hostlist!r}")
    parts.append("".join(current))
    if any(not part for part in parts):
        raise ValueError(f"empty host name in host list {hostlist!r}")
    return parts


def _expand_expression(expression: str) -> list[str]:
    """Expand one host expression; several bracket groups (``r[1-2]n[3-4]``) multiply out."""
    match = _BRACKET.match(expression)
    if match is None:
        if "[" in expression or "]" in expression:
            raise ValueError(f"malformed host expression {expression!r}")
        return [expression]
    heads = [match["prefix"] + suffix for suffix in _expand_ranges(match["ranges"], expression)]
    tails = _expand_expression(match["rest"]) if match["rest"] else [""]
    return [head + tail for head in heads for tail in tails]


def _expand_ranges(ranges: str, expression: str) -> list[str]:
    """``01-03,7`` -> ``['01', '02', '03', '7']``; zero padding follows the lower bound's width."""
    out: list[str] = []
    for item in ranges.split(","):
        low, sep, high = item.partition("-")
        if not low.isdigit() or (sep and not high.isdigit()):
            raise ValueError(f"bad range {item!r} in host expression {expression!r}")
        if not sep:
            out.append(low)
            continue
        if int(high) < int(low):
            raise ValueError(f"descending range {item!r} in host expression {expression!r}")
        out.extend(str(number).zfill(len(low)) for number in range(int(low), int(high) + 1))
    return out
