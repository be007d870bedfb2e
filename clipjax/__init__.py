"""clipjax: contrastive language-image pretraining in JAX (README.md, CHANGELOG.md)."""
__version__ = '0.2.0'
