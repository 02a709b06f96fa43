"""Small shared types used by more than one core package (clock, codes, units).

Kept deliberately tiny: it holds vocabulary, never behaviour with I/O.
"""
