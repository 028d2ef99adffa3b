"""pluralign: pluralistic preference alignment (MixDPO, DAHP, PAL) with subgroup evaluation."""

__version__ = "0.1.0"
