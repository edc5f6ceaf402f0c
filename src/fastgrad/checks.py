"""`gradcheck`: backward's gradients against central finite differences, as the blog's
first section checks them by hand, with a report of the worst mismatch."""
from __future__ import annotations

from typing import Any, Callable, Sequence

from fastgrad.grad_mode import no_grad


class GradcheckError(AssertionError):
    """Raised by gradcheck when a gradient and its finite difference disagree."""


def gradcheck(f: Callable[..., Any], inputs: Sequence[Any], eps: float = 1e-6,
              rtol: float = 1e-5, atol: float = 1e-8, raise_exception: bool = True) -> bool:
    """Checks d f / d inputs[i], from backward(), against (f(x + eps) - f(x - eps)) / 2 eps.

    f takes one Value per input and returns a Value. inputs are numbers or Values (only
    their data is used; their grads are not touched): fresh Values of the same engine are
    made for each evaluation. Input i passes if |backward - fd| <= atol + rtol * |fd|.
    Returns True; otherwise raises GradcheckError naming the worst input (or returns False
    with raise_exception=False).
    """
    from fastgrad import Value as default_value
    if len(inputs) == 0:
        raise ValueError("gradcheck needs at least one input")
    if eps <= 0.0:
        raise ValueError(f"eps must be positive, not {eps!r}")
    given = [x for x in inputs if hasattr(x, "data") and hasattr(x, "backward")]
    Value = type(given[0]) if given else default_value
    xs = [float(x.data) if hasattr(x, "data") else float(x) for x in inputs]

    leaves = [Value(x) for x in xs]
    out = f(*leaves)
    if not (hasattr(out, "backward") and hasattr(out, "data")):
        raise TypeError(f"f must return a Value, not {type(out).__name__!r}")
    out.backward()
    analytic = [v.grad for v in leaves]

    def at(i: int, h: float) -> float:
        with no_grad():
            return float(f(*[Value(x + h if k == i else x) for k, x in enumerate(xs)]).data)

    numeric = [(at(i, eps) - at(i, -eps)) / (2 * eps) for i in range(len(xs))]
    errors = [abs(a - n) for a, n in zip(analytic, numeric)]
    allowed = [atol + rtol * abs(n) for n in numeric]
    failed = [i for i in range(len(xs)) if not errors[i] <= allowed[i]]   # nan fails too
    if not failed:
        return True
    worst = max(failed, key=lambda i: errors[i] / allowed[i] if errors[i] == errors[i] else float("inf"))
    report = (f"gradcheck failed for {len(failed)} of {len(xs)} inputs; worst: input {worst} "
              f"(data {xs[worst]!r}): backward {analytic[worst]!r}, finite difference "
              f"{numeric[worst]!r}, |difference| {errors[worst]:.3g} > allowed "
              f"{allowed[worst]:.3g} (atol {atol:g} + rtol {rtol:g} * |finite difference|)")
    if raise_exception:
        raise GradcheckError(report)
    return False
