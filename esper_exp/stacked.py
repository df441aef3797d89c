"""Building blocks with a leading member axis: one tensor holds the same parameter of K independent runs.

A group of K runs trains as one set of stacked parameters ``[K, ...]``. Every operation here keeps members
independent: member k's outputs, gradients, norms and optimizer state depend only on member k's inputs, so a
member computes what it would compute alone. Measured facts this rests on (DESIGN.md section 5):

* ``torch.baddbmm`` over stacked weights equals per-member ``F.linear`` bitwise on CPU (not on CUDA), and
  respects autocast; ``torch.func.vmap`` does neither reliably (it silently drops autocast), so it is not used.
* Adam's update is elementwise, so one Adam over a stacked parameter is K Adams, *provided* each member keeps its
  own step count and may skip a step: :class:`MemberAdam` does that (target-KL early stop, an fp16 overflow or a
  failed member skip that member only; a plain ``torch.optim.Adam`` would move a skipped member on momentum).
* The fp16 loss scale is per member (:class:`MemberGradScaler`): one member's overflow must not skip the others'
  steps or shrink their scale. Grad-norm clipping is per member (:func:`clip_grad_norm_per_member`).

Nothing here reads a tensor back to the host, so a minibatch update built from these pieces can be captured in a
CUDA graph.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn


def member_view(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A [K] tensor shaped to broadcast against ``like`` ([K, ...])."""
    return t.view(-1, *([1] * (like.dim() - 1)))


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
        if self.members == 1:
            # CPU (torch 2.13) picks another GEMM kernel for a batch of one than for a batch of two or more (seen:
            # one output column, two input rows, one row under bf16), while batches of 2, 3 and 10 agree bitwise for
            # every shape we tried, forward and backward. So a single member is computed beside a zero twin and
            # sliced out: a run alone then equals the same run as a member of any group.
            weight = torch.cat([self.weight, torch.zeros_like(self.weight)])
            bias = torch.cat([self.bias, torch.zeros_like(self.bias)])
            return torch.baddbmm(bias.unsqueeze(1), torch.cat([x, torch.zeros_like(x)]), weight.transpose(1, 2))[:1]
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


def member_norms(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-member L2 norm over several [K, ...] tensors: [K]. Same reduction as clip_grad_norm_ (norm of norms)."""
    norms = [torch.linalg.vector_norm(t.reshape(t.shape[0], -1), 2, dim=1) for t in tensors]
    return torch.linalg.vector_norm(torch.stack(norms, dim=1), 2, dim=1)


def clip_grad_norm_per_member(params: Sequence[torch.Tensor], max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` applied to each member separately; returns the per-member norms before clipping [K]."""
    grads = [p.grad for p in params if p.grad is not None]
    total = member_norms(grads)
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(member_view(coef, g))
    return total


class MemberGradScaler:
    """torch.amp.GradScaler's dynamic loss scaling with one scale per member (fp16 only; disabled otherwise).

    Same constants and rule as torch's: init 2**16, x0.5 on an overflow (that member's step is skipped), x2 after
    2000 successful steps in a row."""

    def __init__(self, members: int, device: torch.device, enabled: bool, init_scale: float = 2.0**16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5, growth_interval: int = 2000):
        self.enabled = enabled
        self.growth_factor, self.backoff_factor, self.growth_interval = growth_factor, backoff_factor, growth_interval
        self.scale = torch.full((members,), init_scale if enabled else 1.0, dtype=torch.float32, device=device)
        self.growth_tracker = torch.zeros(members, dtype=torch.int32, device=device)

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """loss [K] -> the scalar to call backward on (sum of member losses, each times its scale)."""
        return (loss * self.scale).sum() if self.enabled else loss.sum()

    def unscale_(self, params: Sequence[torch.Tensor]) -> None:
        if not self.enabled:
            return
        inv = self.scale.double().reciprocal().float()
        for p in params:
            if p.grad is not None:
                p.grad.mul_(member_view(inv, p.grad))

    def update(self, found_inf: torch.Tensor, stepped: torch.Tensor) -> None:
        """found_inf, stepped: [K] bool. Members that did not take part (stepped and found_inf both false because
        they were masked out) keep their scale and tracker."""
        if not self.enabled:
            return
        took_part = stepped | found_inf
        grown = self.growth_tracker + 1
        grow = grown >= self.growth_interval
        new_scale = torch.where(found_inf, self.scale * self.backoff_factor,
                                torch.where(grow, self.scale * self.growth_factor, self.scale))
        new_tracker = torch.where(found_inf | grow, torch.zeros_like(grown), grown)
        self.scale = torch.where(took_part, new_scale, self.scale)
        self.growth_tracker = torch.where(took_part, new_tracker, self.growth_tracker)

    def state_dict(self, k: int) -> dict:
        return {"scale": self.scale[k].item(), "growth_tracker": int(self.growth_tracker[k].item())}

    def load_state_dict(self, k: int, state: dict) -> None:
        self.scale[k] = state["scale"]
        self.growth_tracker[k] = state["growth_tracker"]


class MemberAdam:
    """Adam (torch.optim.Adam's single-tensor algorithm, no weight decay, no amsgrad) over stacked [K, ...]
    parameters, with a step count, learning rate and step mask per member.

    ``step(mask)`` moves only the members where ``mask`` is true; the others keep parameters, moments and step
    count exactly (torch.where), as if they had not been asked to step."""

    def __init__(self, params: Sequence[nn.Parameter], lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.members = self.params[0].shape[0]
        device = self.params[0].device
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.lr = torch.full((self.members,), lr, dtype=torch.float64, device=device)
        self.steps = torch.zeros(self.members, dtype=torch.float64, device=device)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self, mask: torch.Tensor) -> None:
        steps = self.steps + mask.to(self.steps.dtype)
        # torch's Adam computes these in Python doubles; here as float64 tensors, then to the parameter dtype
        bias1 = 1 - self.beta1 ** steps
        bias2 = 1 - self.beta2 ** steps
        step_size = (self.lr / bias1).float()
        bias2_sqrt = bias2.sqrt().float()
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            if p.grad is None:
                continue
            g = p.grad
            keep = member_view(mask, p)
            m_new = m.lerp(g, 1 - self.beta1)
            v_new = v.mul(self.beta2).addcmul_(g, g, value=1 - self.beta2)
            denom = (v_new.sqrt() / member_view(bias2_sqrt, p)).add_(self.eps)
            p_new = p - member_view(step_size, p) * m_new / denom
            m.copy_(torch.where(keep, m_new, m))
            v.copy_(torch.where(keep, v_new, v))
            p.copy_(torch.where(keep, p_new, p))
        self.steps = steps

    def set_lr(self, lr: torch.Tensor) -> None:
        self.lr = lr.to(self.lr)

    def state_dict(self, k: int) -> dict:
        return {"step": self.steps[k].item(), "lr": self.lr[k].item(),
                "exp_avg": [m[k].cpu().clone() for m in self.exp_avg],
                "exp_avg_sq": [v[k].cpu().clone() for v in self.exp_avg_sq]}

    def load_state_dict(self, k: int, state: dict) -> None:
        if len(state["exp_avg"]) != len(self.params):
            raise ValueError(f"optimizer state has {len(state['exp_avg'])} tensors, this policy {len(self.params)}")
        self.steps[k], self.lr[k] = state["step"], state["lr"]
        for m, v, sm, sv in zip(self.exp_avg, self.exp_avg_sq, state["exp_avg"], state["exp_avg_sq"]):
            m[k].copy_(sm)
            v[k].copy_(sv)
