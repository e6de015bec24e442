"""stgraph: predict spatially resolved gene expression from H&E histology.

Spatially aware contrastive models (BLEEP, HECLIP, mclSTExp, ST-GCHB) as configurations of one framework:
``data`` (readers, preprocessing, patches) → ``graph`` (spot graphs) → ``nn``/``models`` (encoders, heads)
→ ``losses`` → ``training`` → ``inference`` (reference + kNN imputation) → ``metrics``/``evaluation``.
"""
__version__ = "0.1.0"
