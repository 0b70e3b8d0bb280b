"""Optional third-party DVH engines, used only to compare against sbrt-check's own engine.

Nothing here is imported when sbrt-check starts: each engine module imports its library
inside its functions, so a missing or broken optional library only affects `--engine`.
"""
