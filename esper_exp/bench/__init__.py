"""Microbenchmarks and numerics checks for tickets B3-PT-05 (GELU variant) and B2-PT-02 (blend casts).

One concept per module: ``timing`` (how anything is timed, and the hardware ceilings), ``gelu``
(seed MLP speed), ``fusion`` (what Inductor generates), ``numerics`` (errors against float64),
``policy_probe`` (a tiny trained policy whose activations feed the numerics), ``blend``
(blend_add speed and correctness), ``report`` (JSON + markdown), ``cli`` (``esper-bench``).

Every seed forward runs under an :class:`esper_exp.numerics.Numerics` (GELU variant x autocast dtype), the same
call-time object the policy, PPO and probe use: one per (variant, precision) benchmarked, no local autocast helper.

Imports only torch, numpy and the standard library (plus esper_exp.numerics / seeds / stacked / blend, which
import only torch), so it runs on a GPU box that has none of the trainer's dependencies.
"""
