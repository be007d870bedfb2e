"""configs/README.md is the generated reference of every config key (it must not drift)."""
from pathlib import Path

from clipjax import config_base

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_is_up_to_date():
  assert (ROOT / 'configs/README.md').read_text() == config_base.reference(), (
      'configs/README.md is stale: python -m clipjax.config_base > configs/README.md')


def test_every_key_has_a_meaning():
  config = config_base.base_config()
  config.data = config_base.synthetic_data(10)
  assert set(config_base.flat_keys(config)) - set(config_base.MEANING) == set()
