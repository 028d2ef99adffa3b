"""Recipes built from the library layers (nothing below imports them)."""
