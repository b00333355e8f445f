"""Reports over every variant and seed: mean ± std, the leaderboard, published vs measured, and
the figures (and the gradient profile the diagnose stage measures).
"""
