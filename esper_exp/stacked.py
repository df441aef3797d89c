"""Building blocks with a leading member axis: one tensor holds the same parameter of K independent runs.

A group of K runs trains as one set of stacked parameters ``[K, ...]``. Every operation here keeps members
independent: member k's outputs, gradients, norms and optimizer state depend only on member k's inputs, so a
member computes what it would compute alone. Measured facts this rests on (DESIGN.md section 5):

* ``torch.baddbmm`` over stacked weights equals per-member ``F.linear`` bitwise on CPU (not on CUDA), and
  respects autocast; ``torch.func.vmap`` does neither reliably (it silently drops autocast), so it is not used.
* Adam's update is elementwise, so one Adam over stacked parameters is K Adams, *provided* each member keeps its
  own step count and may skip a step: :class:`MemberAdam` does that (target-KL early stop, an fp16 overflow or a
  failed member skip that member only; a plain ``torch.optim.Adam`` would move a skipped member on momentum).
* :class:`FlatParams` puts all parameters of all members in one [K, P] buffer, so per-member work over all
  parameters (unscale, grad norm and clip, Adam) is one op, not one per parameter tensor.
* The fp16 loss scale is per member (:class:`MemberGradScaler`): one member's overflow must not skip the others'
  steps or shrink their scale. Grad-norm clipping is per member (:func:`clip_grad_norm_per_member`).

The step mask of :class:`MemberAdam.step` is read on the host (it picks one fused call or one per member), which is
free on CPU; the CUDA-graph path uses :meth:`MemberAdam.step_masked` instead (mask, step counts and learning rates as
device tensors, elementwise Adam over [K, P], no host read), equal to the fused step up to rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


class StackedLinear(nn.Module):
    """K independent ``nn.Linear(in_dim, out_dim)``: weight [K, out, in], bias [K, out]; x [K, B, in] -> [K, B, out].

    ``init(weight_k, bias_k, generator_k)`` initialises member k's slice from member k's own generator, so a
    member's initial weights depend on its seed only, not on the group it is in."""

    def __init__(self, members: int, in_dim: int, out_dim: int,
                 init: Callable[[torch.Tensor, torch.Tensor, torch.Generator | None], None],
                 generators: Sequence[torch.Generator | None]):
        super().__init__()
        if len(generators) != members:
            raise ValueError(f"{len(generators)} generators for {members} members")
        self.members, self.in_dim, self.out_dim = members, in_dim, out_dim
        self.weight = nn.Parameter(torch.empty(members, out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(members, out_dim))
        with torch.no_grad():
            for k, gen in enumerate(generators):
                init(self.weight[k], self.bias[k], gen)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))

    def extra_repr(self) -> str:
        return f"members={self.members}, in_dim={self.in_dim}, out_dim={self.out_dim}"


def orthogonal_init(std: float = math.sqrt(2), bias: float = 0.0):
    """CleanRL's layer init (orthogonal weight with gain ``std``, constant bias), per member."""

    def init(weight: torch.Tensor, b: torch.Tensor, gen: torch.Generator | None) -> None:
        nn.init.orthogonal_(weight, std, generator=gen)
        nn.init.constant_(b, bias)

    return init


def linear_default_init(weight: torch.Tensor, bias: torch.Tensor, gen: torch.Generator | None) -> None:
    """``nn.Linear``'s default init (kaiming-uniform weight, uniform bias), per member."""
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
    bound = 1 / math.sqrt(weight.shape[1]) if weight.shape[1] > 0 else 0
    nn.init.uniform_(bias, -bound, bound, generator=gen)


def zeros_init(weight: torch.Tensor, bias: torch.Tensor, gen: torch.Generator | None) -> None:
    nn.init.zeros_(weight)
    nn.init.zeros_(bias)


class FlatParams:
    """A member-major mirror of a stacked module's parameters: ``data`` [K, P] and ``grad`` [K, P].

    Per-member work on all parameters is then one op on a [K, P] tensor instead of one per parameter: loss-scale
    unscaling, the grad norm and its clip, the finite check, and Adam (torch's fused kernel). P is padded to a
    multiple of ``align`` floats, so every member's row starts on a vector boundary: a kernel run over all members
    treats each element exactly as a run over one member's row does (torch's fused Adam does not give the same bits
    for an element at another alignment). The module keeps its own contiguous [K, ...] parameters, because CPU GEMM
    kernels are chosen by strides and views into ``data`` would make a member's numbers depend on K:
    :meth:`gather_grads` copies the gradients in (one op), :meth:`scatter` copies updated values back (one op), and
    :meth:`pull` re-reads the module after its parameters were written directly (checkpoint load).

    Every gather writes whole rows, padding included (zeros), so ``grad`` depends on the current gradients alone: a
    NaN that the per-member clip's in-place multiply leaves in the padding (a member whose norm was NaN) would else
    outlive its step and make every later norm of that member NaN (session 22: the cause of the fp16 arm's stalls)."""

    def __init__(self, module: nn.Module, members: int, align: int = 64):
        """Every parameter's leading dim is r * members (r stacked networks per member, e.g. r = 2 for a critic and
        an actor trunk computed together): member k owns rows k, K + k, ... A module with ``flat_layout()`` (a mixed
        group's policy: one trunk per segment) names instead, per parameter, its member-level key and the members
        [a, b) it holds (member k owns rows k - a, (b - a) + k - a, ...): the tensors of one key share the columns
        of that key, so every member's row is laid out as in a group of one segment."""
        K = self.members = members
        layout = (module.flat_layout() if hasattr(module, "flat_layout")
                  else [(name, p, 0, K) for name, p in module.named_parameters()])
        self.params = [p for _, p, _, _ in layout]
        sizes: dict[str, int] = {}
        for key, p, a, b in layout:
            if b <= a or p.shape[0] % (b - a) or sizes.setdefault(key, p.numel() // (b - a)) != p.numel() // (b - a):
                raise ValueError(f"parameter {key} of shape {tuple(p.shape)} has no member axis of {b - a}")
        self.used = sum(sizes.values())  # columns of a row that hold parameters; the rest is padding
        P = -(-self.used // align) * align
        ref = self.params[0]
        self.data = torch.zeros(K, P, dtype=ref.dtype, device=ref.device)
        self.grad = torch.zeros_like(self.data)
        offsets, offset = {}, 0
        for key, n in sizes.items():
            offsets[key], offset = offset, offset + n
        # per parameter: where its members' rows sit in a [K, P] buffer (rows a..b, columns off..off+n, r stacked
        # networks per member), and the parameter itself as [r, m, n/r] (its storage never moves: updates are copies)
        self._spec = [(a, b, offsets[key], sizes[key], p.shape[0] // (b - a)) for key, p, a, b in layout]
        self.columns = {key: (offsets[key], sizes[key]) for key in sizes}  # each key's columns in a member's row
        self._param_views = [p.data.view(r, b - a, -1) for (a, b, _, _, r), p in zip(self._spec, self.params)]
        self._views, self._grad_views = self._views_of(self.data), self._views_of(self.grad)
        self.pull()

    def _views_of(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Every parameter's place in a [K, P] ``buffer`` as an [r, m, n/r] view (the shape of ``_param_views``)."""
        return [buffer[a:b, off:off + n].view(b - a, r, n // r).transpose(0, 1) for a, b, off, n, r in self._spec]

    @torch.no_grad()
    def pull(self) -> None:
        torch._foreach_copy_(self._views, self._param_views)

    @torch.no_grad()
    def flatten(self, grads: list[torch.Tensor | None], out: torch.Tensor | None = None) -> torch.Tensor:
        """Per-parameter tensors shaped like ``params`` (None: zeros) as one member-major [K, P] tensor: into ``out``
        (one foreach copy), or a new one."""
        if out is None:
            out = torch.zeros_like(self.data)
        else:  # the padding: a non-finite value left there would outlive this gather
            out[:, self.used:].zero_()
        targets = self._grad_views if out is self.grad else self._views_of(out)
        pairs = [(t, g.reshape(pv.shape)) for t, g, pv in zip(targets, grads, self._param_views) if g is not None]
        torch._foreach_copy_([t for t, _ in pairs], [g for _, g in pairs])
        for t, g in zip(targets, grads):
            if g is None:
                t.zero_()
        return out

    def grads_of(self, output: torch.Tensor) -> torch.Tensor:
        """The gradients of the scalar ``output`` w.r.t. the parameters as a new [K, P] tensor, read-only
        (``torch.autograd.grad``: no ``.grad`` is written; a parameter that does not require grad, or that ``output``
        does not use, gives zeros): a step's gradient recomputed beside the run (the drift probe, the non-finite
        trace)."""
        params = [p for p in self.params if p.requires_grad]
        grads = iter(torch.autograd.grad(output, params, allow_unused=True))
        with torch.no_grad():
            return self.flatten([next(grads) if p.requires_grad else None for p in self.params])

    def gather_grads(self) -> None:
        self.flatten([p.grad for p in self.params], self.grad)

    @torch.no_grad()
    def scatter(self) -> None:
        torch._foreach_copy_(self._param_views, self._views)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None


def member_grad_norms(grad: torch.Tensor) -> torch.Tensor:
    """Each member's L2 norm of its flat gradients (grad: [K, P]) in grad's dtype: what the clip and the finite
    check read."""
    return torch.linalg.vector_norm(grad, 2, dim=1)


def clip_grad_norm_per_member(grad: torch.Tensor, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` applied to each member's gradients separately (grad: [K, P], the flat gradients);
    returns the per-member L2 norms before clipping [K]."""
    total = member_grad_norms(grad)
    grad.mul_((max_norm / (total + 1e-6)).clamp(max=1.0).unsqueeze(1))
    return total


class MemberGradScaler:
    """torch.amp.GradScaler's dynamic loss scaling with one scale per member (fp16 only; disabled otherwise).

    Same constants and rule as torch's: init 2**16, x0.5 on an overflow (that member's step is skipped), x2 after
    2000 successful steps in a row. ``enabled`` is one flag for the group or one per member (a mixed group: only its
    fp16 members scale; the others keep a scale of exactly 1, which multiplies and divides nothing)."""

    def __init__(self, members: int, device: torch.device, enabled: bool | Sequence[bool],
                 init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000):
        per_member = [bool(enabled)] * members if isinstance(enabled, bool) else [bool(e) for e in enabled]
        if len(per_member) != members:
            raise ValueError(f"{len(per_member)} loss-scale flags for {members} members")
        self.enabled = any(per_member)
        self.scaled_members = per_member
        self.scaled = torch.tensor(per_member, dtype=torch.bool, device=device)
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.scale = torch.tensor([init_scale if e else 1.0 for e in per_member], dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros(members, dtype=torch.int32, device=device)

    def scale_loss(self, loss: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """loss [K] -> the scalar to call backward on (sum of member losses, each times its scale); ``scale``: as in
        :meth:`unscale_`."""
        return (loss * (self.scale if scale is None else scale)).sum() if self.enabled else loss.sum()

    def unscale_(self, grad: torch.Tensor, scale: torch.Tensor | None = None) -> None:
        """grad: [K, P] flat gradients, multiplied by each member's 1/scale (as torch's GradScaler does); ``scale``: a
        [K] scale to use instead of the current one (the non-finite trace's recomputation of a step already taken)."""
        if self.enabled:
            grad.mul_((self.scale if scale is None else scale).double().reciprocal().float().unsqueeze(1))

    def update(self, found_inf: torch.Tensor, stepped: torch.Tensor) -> None:
        """found_inf, stepped: [K] bool. Members that did not take part (stepped and found_inf both false because
        they were masked out) keep their scale and tracker."""
        if not self.enabled:
            return
        took_part = (stepped | found_inf) & self.scaled
        grown = self.growth_tracker + 1
        grow = grown >= self.growth_interval
        new_scale = torch.where(found_inf, self.scale * self.backoff_factor,
                                torch.where(grow, self.scale * self.growth_factor, self.scale))
        new_tracker = torch.where(found_inf | grow, torch.zeros_like(grown), grown)
        # in place: a CUDA graph captured over this update keeps reading and writing the same tensors
        self.scale.copy_(torch.where(took_part, new_scale, self.scale))
        self.growth_tracker.copy_(torch.where(took_part, new_tracker, self.growth_tracker))

    def state_dict(self, k: int) -> dict:
        return {"scale": self.scale[k].item(), "growth_tracker": int(self.growth_tracker[k].item())}

    def load_state_dict(self, k: int, state: dict) -> None:
        self.scale[k] = state["scale"]
        self.growth_tracker[k] = state["growth_tracker"]


class MemberAdam:
    """Adam on flat member parameters [K, P] with a step count, learning rate and step mask per member.

    The update is torch's fused Adam kernel (what ``torch.optim.Adam(fused=True)`` runs; no weight decay, no
    amsgrad): one call over all members when they share step count and learning rate and all step, else one call
    per stepping member on its own row. A masked-out member (target-KL stop, fp16 overflow, failed) is not touched:
    parameters, moments and step count keep their values, unlike a plain Adam that moves on momentum."""

    def __init__(self, flat: FlatParams, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, on_device: bool = False):
        """``on_device``: the CUDA-graph path (:meth:`step_masked`): step counts and learning rates live in [K] device
        tensors and the step mask is never read on the host. Off (CPU, eager CUDA): :meth:`step` as described above."""
        self.flat = flat
        self.members = flat.data.shape[0]
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.on_device = on_device
        self.lr = [float(lr)] * self.members
        self.steps = [0] * self.members
        self.exp_avg = torch.zeros_like(flat.data)
        self.exp_avg_sq = torch.zeros_like(flat.data)
        if on_device:  # float64: the bias corrections and lr / bias_correction1 are formed in double, as torch's kernel
            self.step_t = torch.zeros(self.members, dtype=torch.float64, device=flat.data.device)
            self.lr_t = torch.full((self.members,), float(lr), dtype=torch.float64, device=flat.data.device)

    def zero_grad(self) -> None:
        self.flat.zero_grad()

    def _fused(self, rows, step: int, lr: float) -> None:
        f = self.flat
        step_t = torch.tensor(float(step), dtype=torch.float32, device=f.data.device)
        torch._fused_adam_([f.data[rows]], [f.grad[rows]], [self.exp_avg[rows]], [self.exp_avg_sq[rows]], [],
                           [step_t], amsgrad=False, lr=lr, beta1=self.beta1, beta2=self.beta2, weight_decay=0.0,
                           eps=self.eps, maximize=False, grad_scale=None, found_inf=None)

    @torch.no_grad()
    def step(self, mask: Sequence[bool]) -> None:
        """Step the members where mask[k] holds, from ``flat.grad`` (gathered, unscaled and clipped by the caller);
        the module's parameters are updated too."""
        on = [k for k in range(self.members) if mask[k]]
        for k in on:
            self.steps[k] += 1
        if len(on) == self.members and len({(self.steps[k], self.lr[k]) for k in on}) == 1:
            self._fused(slice(None), self.steps[0], self.lr[0])
        else:
            for k in on:
                self._fused(slice(k, k + 1), self.steps[k], self.lr[k])
        self.flat.scatter()

    @torch.no_grad()
    def step_masked(self, mask: torch.Tensor) -> None:
        """The device-side step (``on_device``; CUDA graphs): step the members where the [K] bool tensor ``mask``
        holds, with no host read. Adam's maths of torch's fused kernel written as elementwise ops over the whole
        [K, P] buffer, per-member step count and learning rate as [K] tensors, and ``where(mask, new, old)`` so a
        masked-out member's parameters, moments and step count keep their values (bits), as in :meth:`step`. Equal
        to :meth:`step` up to rounding (not bitwise: other kernels). Graph-capturable: fixed shapes, no sync."""
        f, b1, b2 = self.flat, self.beta1, self.beta2
        self.step_t.add_(mask.to(self.step_t.dtype))
        step = self.step_t.clamp(min=1.0)  # a member that never stepped: any finite value, discarded by the mask
        step_size = (self.lr_t / (1.0 - torch.pow(b1, step))).to(f.data.dtype).unsqueeze(1)
        bc2_sqrt = (1.0 - torch.pow(b2, step)).sqrt().to(f.data.dtype).unsqueeze(1)
        on = mask.unsqueeze(1)
        g = f.grad
        exp_avg = self.exp_avg * b1 + g * (1.0 - b1)
        exp_avg_sq = self.exp_avg_sq * b2 + g * g * (1.0 - b2)
        new = f.data - step_size * exp_avg / (exp_avg_sq.sqrt() / bc2_sqrt + self.eps)
        self.exp_avg.copy_(torch.where(on, exp_avg, self.exp_avg))
        self.exp_avg_sq.copy_(torch.where(on, exp_avg_sq, self.exp_avg_sq))
        f.data.copy_(torch.where(on, new, f.data))
        f.scatter()

    def set_lr(self, lr: Sequence[float]) -> None:
        self.lr = [float(x) for x in lr]
        if self.on_device:
            self.lr_t.copy_(torch.tensor(self.lr, dtype=torch.float64))

    def state_dict(self, k: int) -> dict:
        step = int(self.step_t[k].item()) if self.on_device else self.steps[k]
        return {"step": step, "lr": self.lr[k], "exp_avg": self.exp_avg[k].cpu().clone(),
                "exp_avg_sq": self.exp_avg_sq[k].cpu().clone()}

    def load_state_dict(self, k: int, state: dict) -> None:
        if state["exp_avg"].shape != self.exp_avg[k].shape:
            raise ValueError(f"optimizer state has {state['exp_avg'].numel()} values per member, this policy "
                             f"{self.exp_avg[k].numel()}: a different model")
        self.steps[k], self.lr[k] = int(state["step"]), float(state["lr"])
        if self.on_device:
            self.step_t[k], self.lr_t[k] = float(state["step"]), float(state["lr"])
        self.exp_avg[k].copy_(state["exp_avg"])
        self.exp_avg_sq[k].copy_(state["exp_avg_sq"])
