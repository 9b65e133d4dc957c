"""Keep libraries' chatter out of what the user reads.

Progress bars and info logs of datasets/transformers would tear through our progress
display; a library's FutureWarning (a deprecated argument, a default about to change)
is addressed to the code calling it, this runtime, not to the user running a recipe;
bitsandbytes warns at import that an optional CPU kernel package is absent; DeepSpeed,
imported by accelerate when installed, warns on every CPU-only machine that it fell
back to the CPU. None of it is the user's to act on. Called before a stage runs and
by the commands that load a model (export, chat, generate, data).
"""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    warnings.filterwarnings("ignore", category=FutureWarning)
    # trl reads a property transformers 5 deprecated, once per trainer.
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated",
                            category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from llm_recipe.runtime.preflight import driver_gpus

    if "DS_ACCELERATOR" not in os.environ and driver_gpus() == 0:
        # Said up front, DeepSpeed takes the CPU without its "unable to detect" warning.
        os.environ["DS_ACCELERATOR"] = "cpu"
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
