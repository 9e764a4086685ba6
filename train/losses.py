"""The losses a student can be distilled with (train.distill.distill_loss), here apart so that the
command line offers them without importing torch (`tusou distill --help` loads nothing heavy).

cosine: 1 − cos(student, teacher), the direction alone (what a search ranks by); mse: the squared
distance of the raw student vector to the unit teacher vector (Multilingual-CLIP's), which also
pulls its length to 1; both: their sum.
"""

LOSSES = ("cosine", "mse", "both")
