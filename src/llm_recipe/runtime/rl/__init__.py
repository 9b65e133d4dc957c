"""Reinforcement-learning pieces of the runtime that are more than trainer glue:
reward functions (:mod:`.rewards`), prompt variants (:mod:`.prompts`), batched
generation backends (:mod:`.generation`), resumable rollout batches (:mod:`.batches`)
and PPO: the algorithm (:mod:`.ppo`), the models it samples and scores with
(:mod:`.ppo_rollout`), its inputs (:mod:`.ppo_inputs`) and its training state and
checkpoints (:mod:`.ppo_state`)."""
