"""Hydra plugin ``hydra/launcher=grouped``: esper-exp's grouped launcher (logic in ``esper_exp.launch``)."""
