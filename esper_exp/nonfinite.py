"""Where a minibatch's backward pass first turns non-finite: a read-only trace, for diagnosis only.

A loss-scaled (fp16) member skips a step whose gradients are not finite, and any member fails on one; the run's
metrics then say *that* it happened, not *where*. With ``ESPER_NONFINITE_TRACE=<file.jsonl>`` in the environment,
PPO (:class:`Tracer`) recomputes such a step's minibatch loss for that member eagerly, with the same parameters, loss
scale and numerics, and backpropagates it with a hook on every autograd node: the first node, in execution order,
whose incoming gradient is finite but whose outgoing gradient is not, is the op that made the non-finite value
(:func:`trace_backward`). One JSON line per traced step goes to the file, naming the member's run as run.json does
(``env_id``, ``gelu``, ``precision``, ``seed``; also its process ``pid`` and index in the group ``member``); the
processes of a sweep, and a run's later launches, may share the file (each line is one short append).

Each record also holds ``step_gradients`` (:func:`step_gradients`): the whole step's gradient for that member
recomputed eagerly (every member's scaled loss, unscaled, its norm as the step's finite check reads it, in float32 and
float64), beside the parameter keys where the gradient the step itself left in ``flat.grad`` is non-finite. Where the
node trace finds nothing, this says whether the recomputation's norm overflows too (finite gradients whose float32
norm does not) or only the step's gradient is non-finite, and in which parameters.

It changes no number a run records: the recomputation runs outside any CUDA graph, reads the parameters and the
static minibatch, takes its gradients with ``torch.autograd.grad`` (nothing accumulates into ``.grad``) and draws no
random numbers (tests/test_nonfinite.py compares a traced run with an untraced one). It costs a device sync per
minibatch step, so it is an environment variable for diagnostic runs, not a config key.

Which steps are traced: a failed step (any precision), and a skipped step whose loss scale was below
``ESPER_NONFINITE_TRACE_BELOW`` (default 1: above it an overflow is the scaler's ordinary probing; below, a scaled
gradient that overflows cannot come from the scale), at most ``ESPER_NONFINITE_TRACE_MAX`` (default 3) per member.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import torch

from esper_exp.numerics import MemberNumerics
from esper_exp.stacked import member_grad_norms

ENV_FILE, ENV_BELOW, ENV_MAX = "ESPER_NONFINITE_TRACE", "ESPER_NONFINITE_TRACE_BELOW", "ESPER_NONFINITE_TRACE_MAX"


def _rows(d: int, members: int, k: int, segment: tuple[int, int] | None) -> list[int] | None:
    """Member k's rows in a tensor that leads with ``d`` rows: K rows (row k), or 2K (a one-segment trunk's critic
    rows, then its actor rows: rows k and K + k; policy.py); in a mixed group's trunk ``segment`` [a, b) also b - a
    rows (row k - a) and 2(b - a) (rows k - a, b - a + k - a). A size two of these layouts share is judged on the
    union of their rows. None: no member axis (judged whole)."""
    out = set()
    for m, j in ((members, k), *([(segment[1] - segment[0], k - segment[0])] if segment else [])):
        out |= {j} if d == m else {j, m + j} if d == 2 * m else set()
    return sorted(out) or None


def _bad(t: torch.Tensor | None, members: int, k: int, segment: tuple[int, int] | None = None) -> bool:
    """Non-finite anywhere in ``t``, or only in member k's rows where ``t`` leads with a member axis (:func:`_rows`)."""
    if t is None or not t.is_floating_point():
        return False
    rows = _rows(t.shape[0], members, k, segment) if members > 1 and t.dim() > 0 else None
    if rows is not None:
        t = t[rows]
    return not bool(torch.isfinite(t).all())


def _amax(ts) -> float | None:
    vals = [t.detach().float().abs().nan_to_num(posinf=float("inf")).max().item()
            for t in ts if t is not None and t.is_floating_point() and t.numel()]
    return max(vals) if vals else None


def _saved(node) -> dict:
    """The forward values ``node`` saved for its backward (``_saved_*`` tensors: e.g. exp's result, mul's operands),
    each as its largest |value| and how many of its entries are not finite: a 0 x inf shows here as an infinite
    operand."""
    out = {}
    for name in dir(node):
        if not name.startswith("_saved_"):
            continue
        try:
            t = getattr(node, name)
        except RuntimeError:  # freed, or not a tensor the binding can return
            continue
        if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel():
            out[name.removeprefix("_saved_")] = {"absmax": _amax([t]), "nonfinite": int((~torch.isfinite(t)).sum())}
    return out


def trace_backward(output: torch.Tensor, inputs: list[torch.Tensor], members: int = 1, k: int = 0,
                   segment: tuple[int, int] | None = None) -> dict:
    """Backpropagate the scalar ``output`` to ``inputs`` (``torch.autograd.grad``: no ``.grad`` is written) with a hook
    on every node of its graph. Returns ``first``: the first node (execution order) with finite incoming and non-finite
    outgoing gradients, as {node, path (node names from the output down to it), shapes, dtypes, largest |incoming| and
    |outgoing| gradient, the forward values it saved (:func:`_saved`)}, or None; ``nodes`` (hooked) and
    ``nonfinite_nodes`` (with a non-finite outgoing gradient); ``inputs_finite`` (every gradient reaching ``inputs``).
    With ``members`` > 1 a tensor that leads with the member axis is judged on member ``k``'s rows only (other members'
    rows may hold their own 0 * inf; :func:`_bad`); ``segment``: the members [a, b) of member k's trunk segment in a
    mixed group (several segments), whose trunk tensors lead with b - a or 2(b - a) rows."""
    if output.grad_fn is None:
        raise ValueError("output has no autograd graph")
    parent: dict = {output.grad_fn: None}
    order, handles, events = [output.grad_fn], [], []
    for node in order:  # breadth-first: every node once, each with the parent it was first reached from
        for nxt, _ in node.next_functions:
            if nxt is not None and nxt not in parent:
                parent[nxt] = node
                order.append(nxt)

    def path(node) -> list[str]:
        out = []
        while node is not None:
            out.append(node.name())
            node = parent[node]
        return out[::-1]

    saved: dict = {}

    def hook(node) -> Callable:
        def fn(grad_inputs, grad_outputs):
            bad_in, bad_out = _bad_any(grad_outputs), _bad_any(grad_inputs)
            if bad_out and not bad_in and not saved:  # the first such node: its saved values, before they are freed
                saved[node] = _saved(node)
            events.append((node, bad_in, bad_out, grad_outputs, grad_inputs))
        return fn

    def _bad_any(ts) -> bool:
        return any(_bad(t, members, k, segment) for t in ts)

    try:
        for node in order:
            if node.name() != "torch::autograd::AccumulateGrad":
                handles.append(node.register_hook(hook(node)))
        grads = torch.autograd.grad(output, inputs, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    first = None
    for node, bad_in, bad_out, g_in, g_out in events:
        if bad_out and not bad_in:
            desc = lambda ts: [None if t is None else [list(t.shape), str(t.dtype).removeprefix("torch.")]  # noqa: E731
                               for t in ts]
            first = {"node": node.name(), "path": path(node), "incoming": desc(g_in), "outgoing": desc(g_out),
                     "incoming_absmax": _amax(g_in), "outgoing_absmax": _amax(g_out), "saved": saved.get(node, {})}
            break
    return {"first": first, "nodes": len(handles), "nonfinite_nodes": sum(e[2] for e in events),
            "inputs_finite": not any(_bad(g, members, k, segment) for g in grads)}


def _nonfinite_keys(flat, row: torch.Tensor) -> dict[str, int]:
    """Non-finite entries of one member's [P] flat row, per parameter key (FlatParams.columns), where there are any."""
    counts = {key: int((~torch.isfinite(row[off:off + n])).sum()) for key, (off, n) in flat.columns.items()}
    return {key: c for key, c in counts.items() if c}


def step_gradients(flat, scaler, loss: torch.Tensor, scale: torch.Tensor, k: int, step_row: torch.Tensor) -> dict:
    """Member k's gradient as the minibatch step forms it, recomputed eagerly, beside what the step itself left.

    ``eager``: every member's ``loss`` [K] scaled by ``scale`` [K] (the step's scales; ``scaler.scale_loss``) and
    backpropagated (``FlatParams.grads_of``: no ``.grad`` written), flattened, unscaled, then member k's L2 norm as the
    step computes it (``member_grad_norms``, float32) and in float64, its non-finite entries per parameter key and its
    largest finite |value| with that key; the norm is what the step's finite check reads, so an infinite float32 norm of
    finite gradients shows here as a finite float64 one. ``step``: the non-finite entries per key of member k's row of
    ``flat.grad`` as the step left it (``step_row``: unscaled and clipped; a clip by an infinite norm turns every inf
    entry to NaN and the rest to 0, a NaN norm turns every entry to NaN). Where the recomputed norm is inf, a key the
    step lists and the recomputation does not is where the two computations part."""
    g = flat.grads_of(scaler.scale_loss(loss, scale))
    scaler.unscale_(g, scale)
    row = g[k]
    finite = torch.where(torch.isfinite(row), row.abs(), 0.0)
    magnitudes = {key: finite[off:off + n].max().item() if n else 0.0 for key, (off, n) in flat.columns.items()}
    top = max(magnitudes, key=magnitudes.get)
    eager = {"grad_norm": member_grad_norms(g)[k].item(),
             "grad_norm_f64": torch.linalg.vector_norm(row.double(), 2).item(),
             "nonfinite": _nonfinite_keys(flat, row), "absmax_finite": magnitudes[top], "absmax_key": top}
    return {"eager": eager, "step": {"nonfinite": _nonfinite_keys(flat, step_row)}}


class Tracer:
    """PPO's side of the trace: which steps to trace, the recomputation, the JSON lines. ``Tracer.from_env()`` is
    None unless ``ESPER_NONFINITE_TRACE`` is set."""

    def __init__(self, path: str, below: float = 1.0, per_member: int = 3):
        self.path, self.below, self.per_member = path, below, per_member
        self.count: dict[int, int] = {}

    @classmethod
    def from_env(cls) -> Tracer | None:
        path = os.environ.get(ENV_FILE)
        if not path:
            return None
        below, most = os.environ.get(ENV_BELOW, "1"), os.environ.get(ENV_MAX, "3")
        try:
            below_f = float(below)
        except ValueError:
            raise ValueError(f"{ENV_BELOW}={below!r} is not allowed; allowed: a number (a loss scale)") from None
        if not most.isdigit() or int(most) < 1:
            raise ValueError(f"{ENV_MAX}={most!r} is not allowed; allowed: an integer >= 1") from None
        return cls(path, below_f, int(most))

    def attach(self, ppo) -> None:
        """Hook into ``ppo`` for the rest of its life (instance attributes wrapping ``PPO.update`` and, per path, the
        minibatch step: ``_clipped_grads`` on the host loop, ``_call`` on the CUDA-graph one, as the drift probe does
        for one update; the two are not combined: train.py refuses)."""
        from esper_exp.ppo import STAT_KEYS, _stat_rows

        cls, n_mb = type(ppo), ppo.batch_size // ppo.minibatch_size
        step = [0]

        def update(advantages, returns):
            step[0] = 0
            return cls.update(ppo, advantages, returns)

        def where() -> dict:
            j = step[0]
            step[0] += 1
            return {"epoch": j // n_mb + 1, "minibatch": j % n_mb + 1}

        def clipped_grads(mb, stepping):  # host loop: flags are returned, the scale is still the step's
            out = cls._clipped_grads(ppo, mb, stepping)
            loss, parts, grad_norm, bad, overflow = out
            stats = lambda: dict(zip(STAT_KEYS, _stat_rows(parts, grad_norm)))  # noqa: E731
            self._check(ppo, lambda: mb, overflow.tolist(), bad.tolist(), ppo.scaler.scale, where(), stats)
            return out

        def call(name, fn):  # CUDA graphs: the step's flags and scale from the device around the replay
            if name != "minibatch":
                return cls._call(ppo, name, fn)
            S = ppo._st
            scale, skipped, stepping = ppo.scaler.scale.clone(), S.skipped.clone(), S.stepping.clone()
            sums = S.sums.clone()
            out = cls._call(ppo, name, fn)
            overflow, bad = (S.skipped > skipped).tolist(), (stepping & ~S.stepping).tolist()
            # the replay's own statistics: what it added to the update's sums (a stepping member's; rounded by the
            # subtraction, and NaN where a sum is already non-finite)
            stats = lambda: dict(zip(STAT_KEYS, S.sums - sums))  # noqa: E731
            self._check(ppo, lambda: S.batch.index(S.idx), overflow, bad, scale, where(), stats)
            return out

        ppo.update = update
        if ppo.cuda_graphs:
            ppo._call = call
        else:
            ppo._clipped_grads = clipped_grads

    def _check(self, ppo, mb_fn: Callable, overflow: list[bool], bad: list[bool], scale_t: torch.Tensor,
               where: dict, stats_fn: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Trace the wanted members of one minibatch step; the minibatch (``mb_fn``) and the scale are read only when
        some member skipped or failed it (most steps: nothing to do but the flags' read)."""
        from esper_exp.ppo import ppo_loss

        if not (any(overflow) or any(bad)):
            return
        scale_t = scale_t.clone()  # the step's scales (the host loop's live tensor is halved after the step)
        scale, mb, stats = scale_t.tolist(), mb_fn(), stats_fn()
        loss_fn = lambda: ppo_loss(ppo.policy.evaluate, mb, ppo.hp, ppo.numerics)  # noqa: E731
        bounds = ppo.policy.bounds  # the trunk segments (policy.py): several in a mixed group
        for k in self.wanted(overflow, bad, scale):
            n = ppo.numerics.members[k] if isinstance(ppo.numerics, MemberNumerics) else ppo.numerics
            segment = next(((a, b) for a, b in bounds if a <= k < b), None) if len(bounds) > 1 else None
            where_k = {"update": ppo.update_idx[k] + 1, "env_id": ppo.envs.env_id, "gelu": n.gelu,
                       "precision": n.precision, "seed": ppo.seeds[k], **where,
                       "failed": bad[k], "members_skipping": sum(overflow), "members_failing": sum(bad)}

            def step_fn(loss: torch.Tensor, k: int = k) -> dict:
                return {"step_stats": {name: v[k].item() for name, v in stats.items()},
                        "step_gradients": step_gradients(ppo.flat, ppo.scaler, loss, scale_t, k, ppo.flat.grad[k])}

            self.trace(k, loss_fn, list(ppo.policy.parameters()), scale[k], ppo.members, where_k, step_fn, segment)

    def wanted(self, overflow: list[bool], bad: list[bool], scale: list[float]) -> list[int]:
        """Members whose step this minibatch is to be traced."""
        out = []
        for k, (o, b) in enumerate(zip(overflow, bad)):
            if self.count.get(k, 0) < self.per_member and (b or (o and scale[k] < self.below)):
                out.append(k)
        return out

    def trace(self, k: int, loss_fn: Callable[[], tuple[torch.Tensor, dict]], params: list[torch.Tensor],
              scale: float, members: int, where: dict, step_fn: Callable[[torch.Tensor], dict] | None = None,
              segment: tuple[int, int] | None = None) -> dict:
        """Recompute the minibatch loss (``loss_fn``: every member's [K] loss and parts), backpropagate member k's
        (times its loss scale) with :func:`trace_backward`; with ``step_fn`` also what it returns for a second
        recomputation's loss (PPO's: the step's own statistics ``step_stats`` and :func:`step_gradients`); append
        the record to the file and return it."""
        self.count[k] = self.count.get(k, 0) + 1
        loss, parts = loss_fn()
        record = {**where, "member": k, "pid": os.getpid(), "loss_scale": scale, "loss": loss[k].item(),
                  **{name: v[k].item() for name, v in parts.items()}}
        record["trace"] = trace_backward(loss[k] * scale, params, members, k, segment)
        if step_fn is not None:
            record.update(step_fn(loss_fn()[0]))
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        return record
