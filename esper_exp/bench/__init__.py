"""Microbenchmarks and numerics checks for tickets B3-PT-05 (GELU variant) and B2-PT-02 (blend casts).

One concept per module: ``timing`` (how anything is timed, and the hardware ceilings), ``gelu``
(seed MLP speed), ``fusion`` (what Inductor generates), ``numerics`` (errors against float64),
``policy_probe`` (a tiny trained policy whose activations feed the numerics), ``blend``
(blend_add speed and correctness), ``report`` (JSON + markdown), ``cli`` (``esper-bench``).

Imports only torch, numpy and the standard library (plus esper_exp.seeds / esper_exp.blend), so it
runs on a GPU box that has none of the trainer's dependencies.
"""

DTYPES = ("fp32", "bf16", "fp16")
