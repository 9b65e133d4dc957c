"""llm-recipe: compile YAML training recipes for language models into plans and runs."""

__version__ = "0.1.0"
