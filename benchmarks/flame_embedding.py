"""Offline embedding throughput of `clipjax.embed.FacetEncoder` (FLAME's frozen-LLM text
side): captions per second through the single prompt and the 7-facet prompt, for the
quickstart's tiny Llama and a larger random one, on this machine's devices.

  python benchmarks/flame_embedding.py [--captions 512] [--batch 64]

The models are random (written in the Hugging Face layout by
`clipjax.convert.llama.save_llama`, read back as any checkpoint is), with a tokenizer
trained on the captions: throughput does not depend on the weights. Captions are the
quickstart's long synthetic ones (30-60 tokens; prompts of about 90 and 170 tokens).
Each row is the median of 3 passes after a warm-up pass (compilation excluded), and the
FLOP rate counts 2 x parameters per padded prompt token (attention excluded).
"""
import argparse
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from clipjax.convert import llama as convert_llama
from clipjax.data import shapes
from clipjax.embed import FacetEncoder
from clipjax.models import facets
from clipjax.models.llama import LlamaEncoder
from clipjax.train import language_model

MODELS = {  # name: LlamaEncoder sizes
    'quickstart (96 x 4)': dict(width=96, layers=4, heads=4, kv_heads=2, mlp_dim=256),
    'small (512 x 8)': dict(width=512, layers=8, heads=8, kv_heads=4, mlp_dim=1408),
}


def write_model(folder, sizes, tokenizer):
  model = LlamaEncoder(vocab_size=len(tokenizer), **sizes)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))['params']
  params = nn.unbox(params)
  convert_llama.save_llama(folder, model, params)
  tokenizer.save_pretrained(folder)
  return sum(x.size for x in jax.tree.leaves(params))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--captions', type=int, default=512)
  parser.add_argument('--batch', type=int, default=64)
  args = parser.parse_args()
  source = shapes.ShapesSource('train', args.captions, caption_style='long')
  captions = [source.caption(i) for i in range(args.captions)]
  prompts = [t.replace(facets.CAPTION, c) for t in facets.TEMPLATES.values() for c in captions[:100]]
  tokenizer = language_model.train_tokenizer(captions + prompts, 1024)
  print(f'{args.captions} captions, batch {args.batch}, devices: {jax.devices()}')
  print('| model | params | template | padded length | captions/s | vectors/s | GFLOP/s |')
  print('|---|---|---|---|---|---|---|')
  for name, sizes in MODELS.items():
    with tempfile.TemporaryDirectory() as folder:
      count = write_model(folder, sizes, tokenizer)
      encoder = FacetEncoder(folder, max_length=256, max_caption_tokens=96,
                             batch_size=args.batch)
      for template in ('single', 'long'):
        _, real = encoder.prompts(template)(captions)
        encoder(captions[:args.batch], template)  # compile
        times = []
        for _ in range(3):
          t0 = time.perf_counter()
          encoder(captions, template)
          times.append(time.perf_counter() - t0)
        rate = args.captions / float(np.median(times))
        tokens = real.shape[1]
        print(f'| {name} | {count / 1e6:.1f}M | {template} | {tokens} | {rate:,.0f} | '
              f'{rate * facets.FACETS[template]:,.0f} | {2 * count * tokens * rate / 1e9:.1f} |')


if __name__ == '__main__':
  main()
