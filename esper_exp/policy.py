"""Actor-critic policy for a group of K members: host encoder -> seed MLP -> blend_add(host, seed, alpha) -> head.

Every parameter has a leading member axis ([K, ...]) and every input is [K, rows, ...]: member k's outputs depend
on member k's weights and inputs only (esper_exp/stacked.py), so a member computes what it would alone. A single
run is K = 1.

Actor and critic are separate networks, each with its own host -> seed -> blend stack (as in CleanRL's PPO): with a
shared trunk the value loss would move the policy's features and change the dynamics under study. Both stacks read
the same alpha (one per member). The two stacks share no parameter; they are only computed together, as one batch
of 2K networks. Every forward takes the :class:`~esper_exp.numerics.Numerics` to run under (GELU
variant and autocast dtype) and enters its autocast itself; head outputs are upcast to fp32 before any distribution
math, so log-probs, entropies and values are fp32 whatever the autocast dtype.

Initial weights and action noise come from per-member ``torch.Generator`` objects seeded with the member's seed, so
seed k draws the same weights and noise in every GELU x precision cell and in every group (paired seeds).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from esper_exp.blend import blend_add
from esper_exp.numerics import MemberNumerics, Numerics
from esper_exp.seeds import make_seed
from esper_exp.stacked import StackedLinear, orthogonal_init

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class Trunk(nn.Module):
    """host encoder (Linear-Tanh x depth) -> seed -> blend_add, for M stacked networks ([M, B, ...])."""

    def __init__(self, members: int, in_dim: int, width: int, depth: int, blueprint: str, checkpointing: bool,
                 blend_cast: str, generators: Sequence[torch.Generator]):
        super().__init__()
        self.host = nn.ModuleList(
            StackedLinear(members, in_dim if i == 0 else width, width, orthogonal_init(), generators)
            for i in range(depth))
        self.seed = make_seed(blueprint, width, members=members, checkpointing=checkpointing, generators=generators)
        self.blend_cast = blend_cast

    def forward(self, x: torch.Tensor, alpha: torch.Tensor, numerics: Numerics) -> torch.Tensor:
        """x [M, B, in], alpha [M] -> blended features [M, B, width] (call under numerics.autocast())."""
        host = x
        for layer in self.host:
            host = torch.tanh(layer(host))
        return blend_add(host, self.seed(host, numerics), alpha.view(-1, 1, 1), cast=self.blend_cast)


class ActorCritic(nn.Module):
    """K members, each with a separate critic and actor network (host -> seed -> blend -> head).

    The two trunks of every member are computed as one stack of 2K networks (rows [0, K): critics, [K, 2K): actors):
    they share no parameter, only the batched matrix products, which halves the number of kernels per forward and
    backward. ``member_params(k)`` names member k's own parameters (critic.*, actor.*, heads, log-std)."""

    def __init__(self, obs_dim: int, action_space, generators: Sequence[torch.Generator], width: int = 64,
                 depth: int = 2, blueprint: str = "mlp", checkpointing: bool = False, blend_cast: str = "always",
                 segments: Sequence[int] | None = None):
        """One member per generator (seeded with the member's seed): member k's weights come from generators[k].
        ``segments``: a mixed group's segment sizes (members per precision, in member order; default one segment),
        each with its own trunk module (see :meth:`heads`)."""
        super().__init__()
        import gymnasium as gym

        if isinstance(action_space, gym.spaces.Discrete):
            self.discrete, out_dim = True, int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            self.discrete, out_dim = False, int(action_space.shape[0])
        else:
            raise ValueError(f"unsupported action space {action_space}; allowed: Discrete, 1-D Box")
        self.members = K = len(generators)
        sizes = list(segments) if segments is not None else [K]
        if sum(sizes) != K or min(sizes) < 1:
            raise ValueError(f"segments {sizes} do not split {K} members")
        starts = np.cumsum([0, *sizes]).tolist()
        self.bounds = [(a, b) for a, b in zip(starts[:-1], starts[1:])]
        gens = list(generators)
        self.trunks = nn.ModuleList(Trunk(2 * (b - a), obs_dim, width, depth, blueprint, checkpointing, blend_cast,
                                          gens[a:b] * 2) for a, b in self.bounds)
        self.critic_head = StackedLinear(K, width, 1, orthogonal_init(1.0), generators)
        self.actor_head = StackedLinear(K, width, out_dim, orthogonal_init(0.01), generators)
        if not self.discrete:
            self.actor_logstd = nn.Parameter(torch.zeros(K, 1, out_dim))  # state-independent log-std
        # alpha is state, not a parameter: one fp32 value per member, set once per PPO update.
        self.register_buffer("alpha", torch.zeros(K))
        self.register_buffer("_head_pad", torch.zeros(1, out_dim - 1, width), persistent=False)  # see heads()
        self._frozen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] | None = None  # see frozen()
        self._numerics_cache: dict = {}  # see _segment_numerics
        self.segment_streams = False  # CUDA, several segments: each segment's heads on its own stream (_on_streams)
        self._streams: dict = {}

    @property
    def trunk(self) -> Trunk:
        """The trunk of a policy of one segment (every group but a mixed one)."""
        if len(self.trunks) != 1:
            raise AttributeError(f"a mixed group's policy has {len(self.trunks)} trunks (policy.trunks)")
        return self.trunks[0]

    def set_alpha(self, values: Sequence[float]) -> None:
        self.alpha.copy_(torch.as_tensor(list(values), dtype=torch.float32))

    def heads(self, obs: torch.Tensor, numerics: Numerics | MemberNumerics,
              members: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(actor output [K, B, out], value [K, B]), fp32: logits (discrete) or action means (continuous).
        ``members=(a, b)``: only members [a, b) (whole trunk segments; ``obs`` holds theirs), e.g. one part of a
        pipelined rollout.

        Both heads are one batched product over the 2K trunk outputs: the critic's [K, 1, width] weight is padded with
        zero rows to the actor's out_dim and stacked on the actor's ([2K, out, width]), and the value is column 0 of
        the critic rows. The batch is then 2K >= 2 for every K, so a lone member (K = 1) runs the same CPU GEMM kernel
        as a member of any group (a batch of one picks another kernel, experiments/grouped_throughput), with no
        zero twin, and the heads cost one kernel instead of two.

        A mixed group (several precisions, ``numerics`` a :class:`MemberNumerics`) has one trunk module per segment
        (members sharing a precision; see :meth:`~esper_exp.numerics.MemberNumerics.segments`): each segment is
        computed under its own autocast exactly as a group of those members alone (GELU picked per member), and the
        outputs are concatenated in member order."""
        stacked = self._frozen or self._stacked()
        if len(stacked) == 1 and isinstance(numerics, Numerics) and members in (None, (0, self.members)):
            return self._segment_heads(self.trunks[0], stacked[0], obs, numerics)  # one segment: no bookkeeping
        lo, hi = members or (0, self.members)
        work = []
        for (a, b), trunk, st, n in zip(self.bounds, self.trunks, stacked, self._segment_numerics(numerics)):
            if a < lo or b > hi:
                if b > lo and a < hi:
                    raise ValueError(f"members {lo}-{hi - 1} cut the trunk segment of members {a}-{b - 1}")
                continue
            work.append((trunk, st, obs if b - a == hi - lo else obs[a - lo:b - lo], n))
        if len(work) == 1:
            return self._segment_heads(*work[0])
        outs = self._on_streams(work, obs) if self.segment_streams and obs.is_cuda else \
            [self._segment_heads(*w) for w in work]
        return torch.cat([o[0] for o in outs]), torch.cat([o[1] for o in outs])

    def _on_streams(self, work: list[tuple], obs: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each segment's heads on its own CUDA stream (the segments are independent chains of small kernels; on one
        stream they queue one after another). The same kernels on the same inputs: numbers do not change. Backward
        runs each segment's gradient kernels on its forward's stream (autograd's stream semantics), and a CUDA-graph
        capture records the fork and join."""
        main = torch.cuda.current_stream(obs.device)
        streams = self._streams.get(obs.device)
        if streams is None or len(streams) < len(work):
            streams = self._streams[obs.device] = [torch.cuda.Stream(obs.device) for _ in work]
        outs = []
        for w, stream in zip(work, streams):
            stream.wait_stream(main)
            with torch.cuda.stream(stream):
                outs.append(self._segment_heads(*w))
        for stream in streams[:len(work)]:
            main.wait_stream(stream)
        for out in outs:  # made on a side stream, used on the main one: not reused before the main stream is done
            for t in out:
                t.record_stream(main)
        return outs

    @staticmethod
    def _segment_heads(trunk: Trunk, stacked: tuple, obs: torch.Tensor, numerics: Numerics):
        """One segment's (actor output [m, B, out], value [m, B]) under its numerics (see :meth:`heads`)."""
        weight, bias, alpha = stacked
        m = obs.shape[0]
        with numerics.autocast():
            features = trunk(torch.cat([obs, obs]), alpha, numerics)
            out = torch.baddbmm(bias.unsqueeze(1), features, weight.transpose(1, 2)).float()
        return out[m:], out[:m, :, 0]

    def _segment_numerics(self, numerics: Numerics | MemberNumerics) -> list[Numerics]:
        """The numerics of each trunk segment: a plain Numerics applies to all; a MemberNumerics must give every
        segment one precision (its GELU may differ per member: a RowGelu). Cached per numerics (eager rollouts call
        this every step)."""
        if isinstance(numerics, Numerics):
            return [numerics] * len(self.bounds)
        cached = self._numerics_cache.get(numerics)
        if cached is not None:
            return cached
        if len(numerics.members) != self.members:
            raise ValueError(f"numerics for {len(numerics.members)} members, the policy has {self.members}")
        out = []
        for a, b in self.bounds:
            inner = MemberNumerics(numerics.members[a:b]).segments
            if len(inner) != 1:
                raise ValueError(f"members {a}-{b - 1} share a trunk segment but not a precision: {numerics.label}")
            out.append(inner[0][2])
        self._numerics_cache[numerics] = out
        return out

    def _stacked(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per segment (members [a, b), m = b - a): both heads' weight [2m, out, width], bias [2m, out] and alpha for
        its 2m trunk rows [2m], from the parameters."""
        critic, actor, out = self.critic_head, self.actor_head, []
        for a, b in self.bounds:
            pad_w = self._head_pad.expand(b - a, -1, -1)
            weight = torch.cat([torch.cat([critic.weight[a:b], pad_w], 1), actor.weight[a:b]])
            bias = torch.cat([torch.cat([critic.bias[a:b], pad_w[:, :, 0]], 1), actor.bias[a:b]])
            out.append((weight, bias, torch.cat([self.alpha[a:b], self.alpha[a:b]])))
        return out

    @contextlib.contextmanager
    def frozen(self):
        """A block in which parameters and alpha do not change (an eager rollout): what :meth:`heads` stacks from them
        is built once on entry instead of at every forward. Not for CUDA-graph capture (a graph must read the live
        parameters at each replay)."""
        self._frozen = self._stacked()
        try:
            yield self
        finally:
            self._frozen = None

    def actor_out(self, obs: torch.Tensor, numerics: Numerics | MemberNumerics) -> torch.Tensor:
        return self.heads(obs, numerics)[0]

    def value(self, obs: torch.Tensor, numerics: Numerics | MemberNumerics,
              members: tuple[int, int] | None = None) -> torch.Tensor:
        return self.heads(obs, numerics, members)[1]

    def draw_noise(self, generators: Sequence[torch.Generator], steps: int, num_envs: int,
                   device: torch.device) -> torch.Tensor:
        """A whole rollout's action noise, drawn before it: [T, K, N, 1] uniforms (discrete, inverse-CDF sampling) or
        [T, K, N, a] standard normals, member k's from generators[k] in one draw of T steps. Each seed has its own
        stream, the same in every cell and group of that seed, and one draw per member per rollout (not per step)
        keeps the random-number cost out of the step and lets the CUDA-graph path replay :meth:`act`."""
        draw = torch.rand if self.discrete else torch.randn
        shape = (steps, num_envs, 1 if self.discrete else self.actor_head.out_dim)
        return torch.stack([draw(shape, generator=g, device=device) for g in generators], dim=1)

    def act(self, obs: torch.Tensor, numerics: Numerics | MemberNumerics, noise: torch.Tensor,
            members: tuple[int, int] | None = None):
        """Sample actions for a rollout step (obs [K, N, d], noise [K, N, 1] or [K, N, a], one step of
        :meth:`draw_noise`): returns (action, log_prob, value). Draws nothing, so it can be graph-captured."""
        out, value = self.heads(obs, numerics, members)
        if self.discrete:
            logp_all = torch.log_softmax(out, dim=-1)
            action = (logp_all.exp().cumsum(-1) < noise).sum(-1).clamp_(max=out.shape[-1] - 1)
            logp = logp_all.gather(-1, action.unsqueeze(-1)).squeeze(-1)
        else:
            logstd = self.actor_logstd if members is None else self.actor_logstd[members[0]:members[1]]
            action = out + logstd.exp() * noise
            logp = (-0.5 * noise.square() - logstd - _LOG_SQRT_2PI).sum(-1)
        return action, logp, value

    def evaluate(self, obs: torch.Tensor, action: torch.Tensor, numerics: Numerics | MemberNumerics):
        """Log-prob and entropy of given actions, and values ([K, B] each): returns (log_prob, entropy, value)."""
        out, value = self.heads(obs, numerics)
        if self.discrete:
            logp_all = torch.log_softmax(out, dim=-1)
            logp = logp_all.gather(-1, action.long().unsqueeze(-1)).squeeze(-1)
            entropy = -(logp_all.exp() * logp_all).sum(-1)
        else:
            logstd = self.actor_logstd.expand_as(out)
            logp = (-0.5 * ((action - out) / logstd.exp()).square() - logstd - _LOG_SQRT_2PI).sum(-1)
            entropy = (0.5 + _LOG_SQRT_2PI + logstd).sum(-1)
        return logp, entropy, value

    # ------------------------------------------------------------------ one member's slice
    def _trunk_param(self, name: str) -> tuple[tuple[int, int], str] | None:
        """((a, b), rest) of a segment trunk's parameter ``trunks.<s>.<rest>`` (members [a, b)); None otherwise."""
        if not name.startswith("trunks."):
            return None
        s, rest = name[len("trunks."):].split(".", 1)
        return self.bounds[int(s)], rest

    def _rows(self, name: str, k: int) -> list[tuple[str, int]]:
        """(member-level name, row) of member k's rows in the tensor ``name`` (none: another segment's trunk)."""
        trunk = self._trunk_param(name)
        if trunk is None:
            return [(name, k)]
        (a, b), rest = trunk
        if not a <= k < b:
            return []
        return [(f"critic.{rest}", k - a), (f"actor.{rest}", b - a + k - a)]

    def flat_layout(self) -> list[tuple[str, torch.Tensor, int, int]]:
        """(member-level key, parameter, first member, end member) of every parameter, for FlatParams: a segment's
        trunk parameter holds members [a, b) (critic rows, then actor rows); the others hold all K."""
        out = []
        for name, p in self.named_parameters():
            trunk = self._trunk_param(name)
            out.append((name, p, 0, self.members) if trunk is None else (f"trunk.{trunk[1]}", p, *trunk[0]))
        return out

    def member_params(self, k: int) -> list[tuple[str, torch.Tensor]]:
        """Member k's parameters as (name, view) pairs, in a fixed order."""
        return [(n, p[row]) for name, p in self.named_parameters() for n, row in self._rows(name, k)]

    def member_state(self, k: int) -> dict[str, torch.Tensor]:
        """Member k's slice of every parameter and buffer (for its own checkpoint)."""
        return {n: t[row].detach().cpu().clone() for name, t in self.state_dict().items()
                for n, row in self._rows(name, k)}

    def load_member_state(self, k: int, state: dict[str, torch.Tensor]) -> None:
        own = {n: (t, row) for name, t in self.state_dict().items() for n, row in self._rows(name, k)}
        if set(own) != set(state):
            raise ValueError(f"checkpoint policy keys differ from this policy's: {sorted(set(own) ^ set(state))[:4]}")
        with torch.no_grad():
            for n, (t, row) in own.items():
                t[row].copy_(state[n])


def obs_dim_of(space) -> int:
    return int(np.prod(space.shape))
