"""Tiled (no B x B) loss statistics, their Pallas kernels, and masked flash attention.

Use them through `clipjax.losses` (`implementation=`) and `kernels.attention`; the
design is in README.md next to this file.
"""
