"""Pretraining objectives: CLIP (MMCL, SSL, SigLIP, CyCLIP), RoCLIP, SafeCLIP."""
