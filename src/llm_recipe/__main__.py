"""``python -m llm_recipe`` is the ``recipe`` command."""

import sys

from llm_recipe.cli import main

sys.exit(main())
