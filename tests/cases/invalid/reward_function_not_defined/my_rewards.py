print("this module must not be run by recipe plan")


def brevity(prompts, completions, **kwargs):
    return [-len(c) / 100 for c in completions]
