"""Reinforcement-learning pieces of the runtime that are more than trainer glue:
reward functions (:mod:`.rewards`) and PPO (:mod:`.ppo`)."""
