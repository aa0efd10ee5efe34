"""The library the stages and commands share; it never imports them (tests/test_bake.py keeps the rule)."""
