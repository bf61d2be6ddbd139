"""How risky a shell command line is, decided by parsing it (tree-sitter-bash), never by a
model or a regular expression over the raw text.

``Policy.default().classify(line, env)`` returns a ``Verdict``: the line's ``Risk`` and one
``Part`` per simple command found, wrappers (``sudo``, ``bash -c``, ``ssh host``...)
unwrapped. The rules are data (``rules.yaml``); a tenant adds ``RuleSpec`` rules with
``Policy.extended`` and ``relaxes`` says whether one of them lowers a built-in class.
"""

from it0.ops.policy.bench import bench_classify, corpus
from it0.ops.policy.classify import Part, Policy, Verdict, relaxes
from it0.ops.policy.rules import PolicyError, Risk, RuleSpec, check_regex

__all__ = [
    "Part",
    "Policy",
    "PolicyError",
    "Risk",
    "RuleSpec",
    "Verdict",
    "bench_classify",
    "check_regex",
    "corpus",
    "relaxes",
]
