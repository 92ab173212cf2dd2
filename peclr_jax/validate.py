"""Config values checked against what the modules that use them accept, before any work.

A rule says whether a value is allowed and, in words, what is ("one of simclr, peclr", "an integer >= 1"). The module
that uses a config section owns its rules, built from the tuples it dispatches on (`augment.RULES`, `models.RULES`,
...); a trainer checks its whole config with `check`, which raises one ConfigError naming the key, the value and what
is allowed.
"""

import dataclasses
import math
from collections.abc import Callable

from peclr_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Rule:
  allows: Callable[[object], bool]
  text: str  # "an integer >= 1"
  plural: str = ""  # "integers >= 1", for tuples and pairs of such values


def _real(v):
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _interval(lo, hi, lo_open=False, hi_open=False):
  if lo is None and hi is None:
    return ""
  if hi is None:
    return f"{'>' if lo_open else '>='} {lo:g}"
  if lo is None:
    return f"{'<' if hi_open else '<='} {hi:g}"
  return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _inside(v, lo, hi, lo_open, hi_open):
  return (lo is None or (v > lo if lo_open else v >= lo)) and (hi is None or (v < hi if hi_open else v <= hi))


def one_of(options):
  options = tuple(options)
  return Rule(lambda v: isinstance(v, str) and v in options, f"one of {', '.join(options)}")


def each_of(options):
  """A tuple whose members are all in `options` (empty is allowed)."""
  options = tuple(options)
  return Rule(
    lambda v: isinstance(v, (tuple, list)) and all(isinstance(x, str) and x in options for x in v),
    f"a tuple of {', '.join(options)}",
  )


def integer(lo=None, hi=None):
  where = _interval(lo, hi)
  return Rule(
    lambda v: isinstance(v, int) and not isinstance(v, bool) and _inside(v, lo, hi, False, False),
    f"an integer {where}".strip(),
    f"integers {where}".strip(),
  )


def number(lo=None, hi=None, lo_open=False, hi_open=False):
  where = _interval(lo, hi, lo_open, hi_open)
  return Rule(
    lambda v: _real(v) and _inside(v, lo, hi, lo_open, hi_open), f"a number {where}".strip(), f"numbers {where}".strip()
  )


POSITIVE = number(0, lo_open=True)
NON_NEGATIVE = number(0)
PROBABILITY = number(0, 1)
COUNT = integer(1)  # sizes, steps, widths
BOOL = Rule(lambda v: isinstance(v, bool), "True or False")
TEXT = Rule(lambda v: isinstance(v, str), "a string")
PATHS = Rule(lambda v: isinstance(v, (tuple, list)) and all(isinstance(x, str) for x in v), "a tuple of paths")


def pair(rule):
  """(lo, hi) with lo <= hi, each allowed by `rule`."""
  ok = lambda v: (
    isinstance(v, (tuple, list)) and len(v) == 2 and rule.allows(v[0]) and rule.allows(v[1]) and v[0] <= v[1]
  )
  return Rule(ok, f"a pair (lo, hi) of {rule.plural}, lo <= hi")


def each(rule):
  """A tuple whose members are each allowed by `rule`."""
  return Rule(lambda v: isinstance(v, (tuple, list)) and all(rule.allows(x) for x in v), f"a tuple of {rule.plural}")


def optional(rule):
  return Rule(lambda v: v is None or rule.allows(v), f"None or {rule.text}")


def under(prefix, rules):
  """The rules of a config section, keyed by their path in the whole config."""
  return {f"{prefix}.{k}": r for k, r in rules.items()}


def get(config, key):
  node = config
  for part in key.split("."):
    if part not in node:
      raise ConfigError(f"config.{key} is missing (the configs in peclr_jax/configs/ have it)")
    node = node[part]
  return node


def check(config, rules):
  """Raises ConfigError for the first value a rule does not allow, naming `config.<key>`, the value and the rule."""
  for key, rule in rules.items():
    value = get(config, key)
    if not rule.allows(value):
      raise ConfigError(f"config.{key}={value!r}: expected {rule.text}")
