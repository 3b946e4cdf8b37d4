"""Routing: which destinations an instance goes to, and a recorded reason for it.

    rules = load_rules(config["routes"], destinations)      # ConfigError names the bad key
    default = load_default(config.get("routing_default"), destinations)
    decision = evaluate(rules, header, RoutingContext(...), default=default)
    decision.to_json()  # stored with the instance; Decision.from_json(...).explain() for trace

Rules are loaded once (and on reload); evaluation is pure and cheap, so it runs per instance.
"""

from gateway.routing.decision import DEFAULT_RULE, Decision, RuleOutcome, Target
from gateway.routing.engine import SOURCES, Condition, RoutingContext, evaluate
from gateway.routing.rules import Rule, load_default, load_rules

__all__ = [
    "DEFAULT_RULE",
    "SOURCES",
    "Condition",
    "Decision",
    "RoutingContext",
    "Rule",
    "RuleOutcome",
    "Target",
    "evaluate",
    "load_default",
    "load_rules",
]
