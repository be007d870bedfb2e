"""Convert a checkpoint: python -m clipjax.convert --from FORMAT SRC --to DST [--to-format F].

Examples:
  python -m clipjax.convert --from hf ./clip-vit-base-patch32 --to ./vit-b32-clipjax
  python -m clipjax.convert --from openai ViT-B-32.pt --to ./vit-b32 --tokenizer ./clip-tokenizer
  python -m clipjax.convert --from clipjax ./my-run-export --to ./hf-out --to-format hf
"""
import argparse
import sys

from clipjax import convert
from clipjax.convert import native


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
  fmt = convert.detect_format(src) if fmt == 'auto' else fmt
  to_format = args.to_format or ('hf' if fmt == 'clipjax' else 'clipjax')
  options = {'act': args.act} if args.act else {}
  model, params, tokenizer = convert.load_model(src, fmt, tokenizer=args.tokenizer, **options)
  if to_format == 'hf':
    convert.export_hf_clip(model, params, args.dst, tokenizer)
  else:
    native.save(model, params, args.dst, tokenizer)
  print(f'{type(model).__name__} from {src} written to {args.dst} ({to_format})')


if __name__ == '__main__':
  sys.exit(main())
