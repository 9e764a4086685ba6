"""Datasets every part of tusou reads or writes: Chinese-CLIP's on-disk layout and the
synthetic Chinese scene/caption generator (eval, train, the demo and the tests share them)."""
