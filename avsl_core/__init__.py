"""avsl_core: genuine sound source localization (Senocak et al., ICCV 2023), its baselines and evaluation."""

__version__ = "0.1.0"
