"""What TorchInductor generates for the compiled seed MLP (B3-PT-05: "Verify TorchInductor fusion
behavior under torch.compile").

The generated wrapper code is captured with ``torch._inductor.utils.run_and_get_code`` for one
forward+backward. In its ``call()`` function each launch is preceded by a comment
``# Topologically Sorted Source Nodes: [...], Original ATen: [aten.baddbmm, aten.gelu]``: that list
says which ATen ops a generated kernel (or an extern library call) computes. From it, GELU's
placement is classified as

- ``matmul_epilogue``: inside a generated matmul template kernel (Triton ``triton_tem_*`` or a CPU
  GEMM template): fused into the matmul;
- ``with_bias_add``: in a pointwise kernel that also adds the fc1 bias (the seed's ``baddbmm`` -- or an
  ``addmm`` -- split into an extern (b)mm plus a fused bias+GELU kernel);
- ``standalone``: in a kernel whose only compute op is GELU (the bias add stayed inside the
  library baddbmm);
- ``fused_with_other``: in a kernel with other ops (listed), but neither of the above;
- ``aten_fallback`` / ``absent``: run by an eager ATen call / not found.

The same for GELU's backward (``gelu_backward``), which usually fuses with the reduction that
gives fc1's bias gradient.

What is compiled is what :mod:`esper_exp.bench.gelu` times: one member of the trainer's seed (stacked weights,
one ``torch.baddbmm`` per layer), through :func:`esper_exp.bench.gelu.seed_forward` with its
:class:`~esper_exp.numerics.Numerics` fixed, so the GELU variant is a constant of the traced graph.
"""

from __future__ import annotations

import re

import torch

from esper_exp.bench.gelu import seed_forward
from esper_exp.numerics import GELU_VARIANTS, Numerics
from esper_exp.seeds import make_seed

_DEF = re.compile(r"^(\w+) = async_compile\.(\w+)\(")
_ATEN = re.compile(r"Original ATen: \[([^\]]*)\]")
_CALL = re.compile(r"^\s*(?:\w+ = )?(extern_kernels\.\w+|torch\.ops\.aten\.\w+(?:\.\w+)?|\w+)(?:\.run)?\(")
# ops that are views/layout, never compute
_NON_COMPUTE = {"aten.t", "aten.view", "aten.permute", "aten.reshape", "aten._unsafe_view", "aten.expand", "aten.transpose", "aten.clone"}
COMPILE_MODES = {"default": {}, "max-autotune": {"mode": "max-autotune-no-cudagraphs"}}


_KNOWN_OPS = sorted(
    "gelu_backward gelu baddbmm addmm mm bmm add mul sum _to_copy to_copy view t clone tanh erf pow sub div exp "
    "permute reshape squeeze unsqueeze lerp clamp where neg native_layer_norm copy cat".split(),
    key=len,
    reverse=True,
)
_END_OF_SOURCE = "'" * 3 + ","


def ops_from_name(name: str) -> list[str]:
    """ATen ops named in a descriptive kernel name, e.g. ``triton_poi_fused__to_copy_addmm_gelu_0``
    -> [aten._to_copy, aten.addmm, aten.gelu] (Inductor's default ``descriptive_names``)."""
    m = re.match(r"^(?:cpp|triton|cuda)_(?:[a-z]+_)?fused_(.*?)(?:_\d+)?$", name)
    rest = m.group(1) if m else ""
    ops = []
    while rest:
        if not rest.startswith("_to_copy"):
            rest = rest.lstrip("_")
        for op in _KNOWN_OPS:
            if rest.startswith(op) and (len(rest) == len(op) or rest[len(op)] == "_"):
                ops.append("aten." + op)
                rest = rest[len(op):]
                break
        else:
            tok, _, rest = rest.partition("_")
            if tok:
                ops.append("aten." + tok)
    return ops


def kernel_sources(code: str) -> dict[str, str]:
    """Source of every kernel the wrapper defines, by name."""
    lines = code.splitlines()
    out = {}
    for i, line in enumerate(lines):
        m = _DEF.match(line)
        if m:
            end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(_END_OF_SOURCE)), len(lines) - 1)
            out[m.group(1)] = "\n".join(lines[i : end + 1])
    return out


def math_functions(source: str) -> list[str]:
    """Transcendental functions a kernel calls (tells exact GELU, erf, from tanh GELU, tanh)."""
    return sorted({f for f in ("erf", "tanh", "exp") if re.search(rf"\b{f}\b|\.{f}\(|{f}f?\(", source)})


def parse_launches(code: str) -> list[dict]:
    """Every kernel launch / extern call in the wrapper's ``call()``, in order, with the ATen ops it
    computes: for a generated kernel, from the source-node comment above its definition (Triton) and
    from its descriptive name; for an extern call, from the comment right above the call."""
    lines = code.splitlines()
    defs = {}
    for i, line in enumerate(lines):
        m = _DEF.match(line)
        if not m:
            continue
        ops = []
        for j in range(max(0, i - 6), i):
            c = _ATEN.search(lines[j])
            if c:
                ops = [o.strip() for o in c.group(1).split(",") if o.strip()]
        body = []
        for j in range(i, min(i + 3000, len(lines))):
            body.append(lines[j])
            if j > i and lines[j].startswith(_END_OF_SOURCE):
                break
        name = m.group(1)
        defs[name] = {"source": "\n".join(body), "aten": sorted(set(ops) | set(ops_from_name(name)))}
    launches = []
    in_call, last_comment, last_comment_line = False, [], -10
    for i, line in enumerate(lines):
        if re.match(r"\s*def call\(", line):
            in_call = True
            continue
        if not in_call:
            continue
        if re.match(r"^(def |class |if __name__|async_compile\.wait)", line):
            break
        m = _ATEN.search(line)
        if m:
            last_comment = [o.strip() for o in m.group(1).split(",") if o.strip()]
            last_comment_line = i
            continue
        m = _CALL.match(line)
        if not m:
            continue
        name = m.group(1)
        if name in defs:
            launches.append({"name": name, "kind": _kernel_kind(name, defs[name]["source"]), "aten": defs[name]["aten"]})
        elif name.startswith(("extern_kernels.", "torch.ops.aten.")):
            # an extern call computes the op it names; its comment also lists the upstream nodes it
            # reads from (seen: a fused gelu_backward kernel's ops on the following mm), so keep that
            # list only for information
            op = "aten." + name.split(".")[-1] if name.startswith("extern_kernels.") else name.removeprefix("torch.ops.").split(".default")[0]
            ops = last_comment if last_comment_line == i - 1 else []
            launches.append({"name": name, "kind": "extern", "aten": [op], "source_aten": ops})
    return launches


def _kernel_kind(name: str, source: str) -> str:
    if "_tem_" in name or "micro_gemm" in source.lower() or "template" in name:
        return "template"
    for tag, kind in (("_poi_", "pointwise"), ("_red_", "reduction"), ("_per_", "persistent_reduction")):
        if tag in name:
            return kind
    return "cpp" if name.startswith("cpp_") else "generated"


def classify(launches: list[dict], op: str) -> dict:
    """Where ``op`` (``aten.gelu`` or ``aten.gelu_backward``) runs in these launches."""
    hits = [l for l in launches if op in l["aten"]]
    if not hits:
        return {"placement": "absent", "kernels": []}
    names = [l["name"] for l in hits]
    if any(l["kind"] == "extern" for l in hits):
        placement = "aten_fallback"
    elif any(l["kind"] == "template" for l in hits):
        placement = "matmul_epilogue"
    else:
        others = sorted({o for l in hits for o in l["aten"]} - _NON_COMPUTE - {op, "aten.gelu", "aten._to_copy"})
        if op == "aten.gelu" and {"aten.baddbmm", "aten.addmm", "aten.add"} & set(others):
            placement = "with_bias_add"
        elif op == "aten.gelu_backward" and "aten.sum" in others:
            placement = "with_bias_grad_reduction"
        elif not others:
            placement = "standalone"
        else:
            placement = "fused_with_other"
        return {"placement": placement, "kernels": names, "fused_ops": others}
    return {"placement": placement, "kernels": names}


def capture(blueprint: str, dim: int, rows: int, variant: str, precision: str, mode: str, device: torch.device, graph: str = "training") -> dict:
    """Compile one seed (one member, as :mod:`esper_exp.bench.gelu` times it) under the numerics of (variant,
    precision), run it once, and return its wrapper codes: forward and backward (``graph="training"``: input and
    parameters need gradients, so fc1's output is saved for the backward) or the no_grad forward alone
    (``graph="inference"``, as in a PPO rollout)."""
    from torch._inductor.utils import run_and_get_code

    numerics = Numerics(gelu=variant, precision=precision, device_type=device.type)
    torch.manual_seed(0)
    seed = make_seed(blueprint, dim).to(device)
    torch.nn.init.normal_(seed.fc2.weight, std=dim**-0.5)
    x = torch.randn(1, rows, dim, device=device, requires_grad=True)
    compiled = seed_forward(seed, numerics, COMPILE_MODES[mode])

    def fw_bw():
        if graph == "inference":
            with torch.no_grad(), numerics.autocast():
                return compiled(x)
        with numerics.autocast():
            y = compiled(x)
        y.float().sum().backward()
        return y

    _, codes = run_and_get_code(fw_bw)
    torch._dynamo.reset()
    return {"codes": codes}


def analyse(codes: list[str]) -> dict:
    """Split the captured codes into forward / backward graphs and classify GELU in each."""
    parsed = [parse_launches(c) for c in codes]
    fwd = [p for p in parsed if any("aten.gelu" in l["aten"] for l in p) and not any("aten.gelu_backward" in l["aten"] for l in p)]
    bwd = [p for p in parsed if any("aten.gelu_backward" in l["aten"] for l in p)]
    fwd_l = fwd[0] if fwd else []
    bwd_l = bwd[0] if bwd else []
    for launches, code in ((fwd_l, next((c for c, p in zip(codes, parsed) if p is fwd_l), "")), (bwd_l, next((c for c, p in zip(codes, parsed) if p is bwd_l), ""))):
        sources = kernel_sources(code)
        for l in launches:
            if l["name"] in sources:
                l["math"] = math_functions(sources[l["name"]])
    return {
        "n_graphs": len(codes),
        "forward": {"launches": fwd_l, "gelu": classify(fwd_l, "aten.gelu"), "n_generated": sum(l["kind"] != "extern" for l in fwd_l), "n_extern": sum(l["kind"] == "extern" for l in fwd_l)},
        "backward": {"launches": bwd_l, "gelu_backward": classify(bwd_l, "aten.gelu_backward"), "n_generated": sum(l["kind"] != "extern" for l in bwd_l), "n_extern": sum(l["kind"] == "extern" for l in bwd_l)},
    }


def run(device: torch.device, quick: bool, deadline, precisions, keep_code_dir=None, graphs=("inference", "training"), modes=("default", "max-autotune")) -> dict:
    if quick:
        cases = [("mlp", 64, 256, v, "fp32", "default", "training") for v in GELU_VARIANTS]
    else:
        shape = ("mlp", 384, 4096) if device.type == "cuda" else ("mlp", 64, 256)
        precs = [p for p in precisions if p != "fp16"] if device.type == "cuda" else ["fp32"]
        # cheap default-mode captures first; max-autotune (minutes of autotuning on a GPU) last, training only
        cases = [(*shape, v, p, "default", g) for g in graphs for p in precs for v in GELU_VARIANTS if "default" in modes]
        if "max-autotune" in modes and "training" in graphs:
            cases += [(*shape, v, p, "max-autotune", "training") for p in precs for v in GELU_VARIANTS]
    records = []
    for blueprint, dim, rows, variant, precision, mode, graph in cases:
        rec = dict(blueprint=blueprint, dim=dim, rows=rows, gelu=variant, precision=precision, mode=mode, graph=graph)
        if deadline.expired():
            rec["skipped"] = "time budget"
            records.append(rec)
            continue
        try:
            codes = capture(blueprint, dim, rows, variant, precision, mode, device, graph)["codes"]
            rec.update(analyse(codes))
            if keep_code_dir is not None:
                keep_code_dir.mkdir(parents=True, exist_ok=True)
                tag = f"{blueprint}_{dim}_{rows}_{variant}_{precision}_{mode}_{graph}"
                (keep_code_dir / f"{tag}.py").write_text("\n\n# ======== next graph ========\n\n".join(codes))
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        records.append(rec)
    return {"records": records}
