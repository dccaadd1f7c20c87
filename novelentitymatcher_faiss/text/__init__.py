"""Texts: normalization, the lexical channel (hashed character n-grams and the cross-language name
map) and the perturbations (typos, partial names) that build-time tuning and calibration use."""
