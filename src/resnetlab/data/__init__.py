"""Datasets: where they come from (download), how they are read safely (archive), the prepared
arrays (prepared), and what happens to a batch on its way into a network (augment, normalize).
"""
