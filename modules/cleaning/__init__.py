"""Defenses that clean a poisoned model: FT, CleanCLIP, ABD, trigger repair, token unlearning (UBT stage 2)."""
