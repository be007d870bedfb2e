"""Convert a checkpoint: python -m clipjax.convert --from FORMAT SRC --to DST [--to-format F].

Examples:
  python -m clipjax.convert --from hf ./clip-vit-base-patch32 --to ./vit-b32-clipjax
  python -m clipjax.convert --from openai ViT-B-32.pt --to ./vit-b32 --tokenizer ./clip-tokenizer
  python -m clipjax.convert --from clipjax ./my-run-export --to ./hf-out --to-format hf
  python -m clipjax.convert --from auto ./runs/quickstart --to ./hf-out   # a run's workdir
"""
import argparse
import json
import os
import sys
import tempfile

from clipjax import convert
from clipjax.convert import native


def is_run_workdir(path: str) -> bool:
  """A training run's workdir (config.json beside checkpoints/), not a model folder."""
  return (os.path.isfile(os.path.join(path, 'config.json'))
          and os.path.isdir(os.path.join(path, 'checkpoints')))


def export_run(workdir: str, folder: str) -> str:
  """Writes the latest checkpoint of a run's workdir to `folder` as a native model folder.

  The trainer is imported here: the convert package sits below clipjax.train.
  """
  import ml_collections  # pylint: disable=g-import-not-at-top
  from clipjax.train.loop import Trainer  # pylint: disable=g-import-not-at-top
  with open(os.path.join(workdir, 'config.json')) as f:
    config = ml_collections.ConfigDict(json.load(f))  # the run's config, tuples as lists
  return str(Trainer(config, workdir).export_checkpoint(folder))


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python -m clipjax.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--from', dest='src', nargs=2, metavar=('FORMAT', 'SRC'), required=True,
                      help=f'source format ({", ".join(convert.FORMATS)} or auto) and path')
  parser.add_argument('--to', dest='dst', required=True, help='output folder')
  parser.add_argument('--to-format', choices=('clipjax', 'hf'), default=None,
                      help='clipjax (default) or hf (Hugging Face CLIP; default for clipjax input)')
  parser.add_argument('--tokenizer', default=None, help='folder with tokenizer.json to carry along')
  parser.add_argument('--act', default=None, help='openai/open_clip MLP activation (quick_gelu, gelu)')
  args = parser.parse_args(argv)
  fmt, src = args.src
  named = src
  with tempfile.TemporaryDirectory() as tmp:
    if fmt in ('auto', 'clipjax') and is_run_workdir(src):
      fmt, src = 'clipjax', export_run(src, os.path.join(tmp, 'export'))
      named = f'{named} (latest checkpoint)'
    elif fmt == 'auto':
      fmt = convert.detect_format(src)
    to_format = args.to_format or ('hf' if fmt == 'clipjax' else 'clipjax')
    options = {'act': args.act} if args.act else {}
    model, params, tokenizer = convert.load_model(src, fmt, tokenizer=args.tokenizer, **options)
    if to_format == 'hf':
      convert.export_hf_clip(model, params, args.dst, tokenizer)
    else:
      native.save(model, params, args.dst, tokenizer)
  print(f'{type(model).__name__} from {named} written to {args.dst} ({to_format})')


if __name__ == '__main__':
  sys.exit(main())
