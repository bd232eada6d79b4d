"""Model text -> what the APIs return: parsers, per-task structuring, the repetition guard."""
