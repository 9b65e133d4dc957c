"""The runtime: executes a Plan stage by stage. It never reads YAML.

Stage kinds live in ``runtime/stages/<kind>.py`` and import torch, transformers, peft
and trl lazily, inside ``run()``, so that the compiler and ``recipe plan`` stay fast.
"""
