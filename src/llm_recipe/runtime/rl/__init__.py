"""Reinforcement-learning pieces of the runtime that are more than trainer glue:
reward functions (:mod:`.rewards`), prompt variants (:mod:`.prompts`), batched
generation backends (:mod:`.generation`), resumable rollout batches (:mod:`.batches`)
and PPO (:mod:`.ppo`)."""
