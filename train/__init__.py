"""Contrastive training of a text tower against an image tower, and the demo model."""
