"""esper-exp: RL training-stability experiments for the esper-lite GELU / blend-dtype tickets."""

__version__ = "0.1.0"
