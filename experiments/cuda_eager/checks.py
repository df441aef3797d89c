"""On-GPU checks for box_run.sh (issue 12), written to one JSON: device resolution, the pinned flags and the CUDA
fingerprint run.json records, which ops the engine uses are refused by deterministic mode on CUDA, the dtype a bf16 /
fp16 member's seed MLP computes in on CUDA, and whether a member's numbers depend on its group's size (batched GEMMs).

    python experiments/cuda_eager/checks.py OUT.json
"""

from __future__ import annotations

import json
import sys

import gymnasium as gym
import torch

from esper_exp import runtime
from esper_exp.numerics import Numerics
from esper_exp.policy import ActorCritic


def first_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"


def main(path: str) -> None:
    out: dict = {"resolve": {}}
    for name, job in (("auto", None), ("cuda", None), ("cuda", 5), ("cuda:0", None), ("cuda:7", None)):
        try:
            out["resolve"][f"{name} job={job}"] = str(runtime.resolve_device(name, job))
        except ValueError as e:
            out["resolve"][f"{name} job={job}"] = f"ValueError: {e}"
    out["flags"] = runtime.pin_cuda_numerics(deterministic=True)
    if torch.cuda.is_available():
        device = runtime.resolve_device("cuda")
        torch.cuda.set_device(device)
        out["fingerprint"] = runtime.cuda_fingerprint(device)
    else:  # a dry run of this script on a CPU-only machine
        device = torch.device("cpu")
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    # ops of policy.py / ppo.py under torch.use_deterministic_algorithms(True) on CUDA
    dev = device
    idx = torch.randint(0, 8, (2, 4), device=dev)

    def fused_adam():
        p, g, m, v = (torch.rand(2, 64, device=dev) for _ in range(4))
        torch._fused_adam_([p], [g], [m], [v], [], [torch.tensor(1.0, device=dev)], amsgrad=False, lr=1e-3,
                           beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8, maximize=False, grad_scale=None,
                           found_inf=None)

    def gather_backward():
        x = torch.rand(8, 2, device=dev, requires_grad=True)
        x.log_softmax(-1).gather(-1, torch.zeros(8, 1, dtype=torch.long, device=dev)).sum().backward()

    ops = {
        "cumsum float (policy.act, discrete: inverse-CDF sampling)": lambda: torch.rand(8, 2, device=dev).cumsum(-1),
        "gather + backward (policy.evaluate, discrete log-prob)": gather_backward,
        "advanced indexing x[rows, idx] (ppo.Minibatch.index)": lambda: torch.rand(2, 8, 3, device=dev)[
            torch.arange(2, device=dev).unsqueeze(1), idx],
        "torch._fused_adam_ (stacked.MemberAdam)": fused_adam,
        "baddbmm (stacked.StackedLinear)": lambda: torch.baddbmm(torch.rand(4, 1, 8, device=dev),
                                                                 torch.rand(4, 16, 8, device=dev),
                                                                 torch.rand(4, 8, 8, device=dev)),
    }
    out["deterministic_ops"] = {}
    for name, fn in ops.items():
        try:
            fn()
            synchronize()
            out["deterministic_ops"][name] = "ok"
        except RuntimeError as e:
            out["deterministic_ops"][name] = first_line(e)

    # seed MLP dtype under each precision, on CUDA (guards the vmap/autocast trap on the GPU too)
    space = gym.spaces.Box(-1.0, 1.0, (6,))

    def policy(seeds):
        return ActorCritic(17, space, [torch.Generator().manual_seed(s) for s in seeds]).to(dev)

    pol, seen = policy([1, 2]), {}
    pol.trunk.seed.fc1.register_forward_hook(lambda m, i, o: seen.__setitem__("fc1", str(o.dtype)))
    pol.trunk.seed.fc2.register_forward_hook(lambda m, i, o: seen.__setitem__("fc2", str(o.dtype)))
    out["seed_mlp_dtype"] = {}
    for precision in ("fp32", "bf16", "fp16"):
        actor, value = pol.heads(torch.rand(2, 5, 17, device=dev), Numerics("exact", precision, device.type))
        out["seed_mlp_dtype"][precision] = {**seen, "actor_out": str(actor.dtype), "value": str(value.dtype)}

    # layout: seed 1 as member 0 of groups of 1, 10 and 60, same weights and inputs: forward and gradients
    gen = torch.Generator().manual_seed(0)
    obs1 = torch.randn(1, 64, 17, generator=gen)
    act1 = torch.randn(1, 64, 6, generator=gen)
    out["layout"] = {}
    for precision in ("fp32", "bf16"):
        res = {}
        for K in (1, 10, 60):
            p = policy(range(1, K + 1))
            p.set_alpha([0.5] * K)
            obs = torch.cat([obs1, torch.randn(K - 1, 64, 17, generator=gen)]).to(dev)
            act = torch.cat([act1, torch.randn(K - 1, 64, 6, generator=gen)]).to(dev)
            logp, _, value = p.evaluate(obs, act, Numerics("exact", precision, device.type))
            (logp.sum() + value.sum()).backward()
            res[K] = {"logp": logp[0].detach().cpu(), "value": value[0].detach().cpu(),
                      "grad_fc1": p.trunk.seed.fc1.weight.grad[K].cpu(),  # member 0's actor trunk row
                      "grad_head": p.actor_head.weight.grad[0].cpu()}
        out["layout"][precision] = {
            f"K={K} vs K=1": {name: {"bitwise_equal": bool(torch.equal(res[K][name], res[1][name])),
                                     "max_abs_diff": (res[K][name].double() - res[1][name].double()).abs().max().item()}
                              for name in res[1]}
            for K in (10, 60)}
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
