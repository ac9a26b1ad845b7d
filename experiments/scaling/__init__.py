"""The scaling view (the paper's §6) on the bundled digits: a width ladder trained on one
FLOP budget, its held-out bound and digits-FID against training compute, power-law fits.
Run `python -m experiments.scaling` from the repository root."""
