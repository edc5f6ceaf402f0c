"""Functions over lists of Values, built from Value ops (so on either engine, and on any
graph the ops can build): softmax and cross-entropy, stable for large logits.

    probs = softmax(logits)                   # list of Values summing to 1
    loss = cross_entropy(logits, target)      # -log softmax(logits)[target]
    loss.backward()

Both subtract the largest logit first (a constant, so the gradients are unchanged): every
exp is of a number <= 0, so nothing overflows, and cross-entropy is computed as
log-sum-exp minus the target's logit rather than as the log of a probability that may
have rounded to 0. At |x| = 1000 both give finite values and gradients.
"""
from __future__ import annotations

from typing import Sequence

from fastgrad.engine import Value


def _shifted(logits: Sequence[Value]) -> tuple[list[Value], float]:
    if len(logits) == 0:
        raise ValueError("softmax of an empty list of logits")
    for v in logits:
        if not hasattr(v, "exp") or not hasattr(v, "data"):
            raise TypeError(f"logits must be Values, not {type(v).__name__!r}")
    m = max(v.data for v in logits)
    return [v - m for v in logits], m


def softmax(logits: Sequence[Value]) -> list[Value]:
    """exp(x_i) / sum_j exp(x_j) for each logit, as Values in the graph."""
    shifted, _ = _shifted(logits)
    exps = [s.exp() for s in shifted]
    total = sum(exps[1:], exps[0])
    return [e / total for e in exps]


def cross_entropy(logits: Sequence[Value], target: int) -> Value:
    """-log(softmax(logits)[target]) = log(sum_j exp(x_j - m)) - (x_target - m), a Value."""
    if isinstance(target, bool) or not isinstance(target, int):
        raise TypeError(f"target must be an int class index, not {type(target).__name__!r}")
    if not -len(logits) <= target < len(logits):
        raise IndexError(f"target {target} out of range for {len(logits)} logits")
    shifted, _ = _shifted(logits)
    exps = [s.exp() for s in shifted]
    return sum(exps[1:], exps[0]).log() - shifted[target]
