"""FLAME: facet-decoupled prompting of a frozen LLM, the offline embedding job, the loss."""
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from clipjax import embed
from clipjax.config_base import load_config
from clipjax.data import shapes, text_features
from clipjax.methods import flame
from clipjax.models import facets
from clipjax.models.llama import LlamaEncoder
from clipjax.train import language_model

CAPTIONS = [shapes.ShapesSource('train', 8, caption_style='long').caption(i) for i in range(8)]
CAPTIONS[1] = 'a red circle?'        # the clean-up: '?' -> '.'
CAPTIONS[2] = 'the "blue" square'    # double quotes become single, a full stop is added


@pytest.fixture(scope='module')
def tokenizer():
  texts = CAPTIONS + [t.replace(facets.CAPTION, c) for t in facets.TEMPLATES.values()
                      for c in CAPTIONS]
  return language_model.train_tokenizer(texts, 300)


@pytest.fixture(scope='module')
def llm():
  model = LlamaEncoder(vocab_size=300, width=32, layers=3, heads=4, kv_heads=2, mlp_dim=48)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32))['params']
  params = nn.unbox(params)
  # Larger weights than the init, so a wrong mask or position shows in the outputs.
  params = jax.tree.map(lambda x: x * 2.0 if x.ndim > 1 else x, params)
  return model, params


def test_templates_are_the_released_ones():
  assert facets.TEMPLATES['single'] == (
      'Image description : "*sent 0*" . After thinking step by step , this image description '
      'means in just one word:"')
  long = facets.TEMPLATES['long']
  assert long.startswith('Detailed Image description : "*sent 0*" . After thinking step by step , <s> ')
  assert long.count('in just one word:"') == 7 and facets.TEMPLATES['short'].count('one word:"') == 3
  assert 'the overall atmosphere or emotion of this image means in just one word:"' in long
  assert facets.clean_caption('a red circle?') == 'a red circle.'
  assert facets.clean_caption('the "blue" square') == "the 'blue' square."
  assert facets.clean_caption("it's 'here'") == "it's 'here'"


def test_prompts_place_the_facets_alike_in_every_row(tokenizer):
  prompts = facets.FacetPrompts(tokenizer, 'long', max_length=256)
  ids, real = prompts(CAPTIONS)
  closing = ids[0, -1]
  lengths = real.sum(1)
  assert len(set(lengths)) > 2 and real[:, -1].all()
  for row, n in zip(ids, lengths):
    assert (row[:len(row) - n] == 0).all()                      # left padding
    ends = [len(row) + e for e in prompts.layout.ends]
    assert (row[ends] == closing).all()
    assert row[len(row) - n] == tokenizer.bos_token_id
    # The shared prefix ends at the template's comma; '<s>' after it is the BOS id
    # again, opening facet 1 (this tokenizer leaves the space before it a token of its own).
    p = len(row) + prompts.layout.prefix_end
    assert tokenizer.convert_ids_to_tokens(int(row[p])) == '\u2581,'
    assert tokenizer.bos_token_id in row[p + 1:p + 3]
  with pytest.raises(ValueError, match='exceeds max_length'):
    facets.FacetPrompts(tokenizer, 'long', max_length=64)(CAPTIONS)
  with pytest.raises(ValueError, match='unknown FLAME template'):
    facets.FacetPrompts(tokenizer, 'medium')


def _explicit_facet(model, params, row, layout, k, layer):
  """Facet k computed alone: the shared prefix and its own tokens, with a plain causal
  mask and the positions they hold in the whole prompt (what facet isolation must equal)."""
  n = len(row)
  p = n + layout.prefix_end
  ends = [n + e for e in layout.ends]
  start = p + 1 if k == 0 else ends[k - 1] + 1
  keep = np.r_[0:p + 1, start:ends[k] + 1]
  _, hidden = model.apply({'params': params}, jnp.asarray(row[keep])[None],
                          positions=jnp.asarray(keep)[None])
  return np.asarray(hidden[layer][0, -1])


def test_facet_decoupled_pass_equals_each_facet_alone(tokenizer, llm):
  model, params = llm
  prompts = facets.FacetPrompts(tokenizer, 'long', max_length=256)
  ids, real = prompts(CAPTIONS[:2])
  layer = 3  # the PyTorch comparison below reads layer 2
  vectors = np.asarray(facets.facet_embeddings(model, params, jnp.asarray(ids), real,
                                               prompts.layout, layer))
  assert vectors.shape == (2, 7, 32)
  for i in range(2):
    row = ids[i][real[i]]
    for k in range(7):
      ref = _explicit_facet(model, params, row, prompts.layout, k, layer)
      np.testing.assert_allclose(vectors[i, k], ref, atol=1e-5 * np.abs(ref).max())
  # Facets differ, and re-indexing positions (facet k run as its own prompt) would not
  # give the same vector: the released embeddings keep absolute positions.
  row = ids[0][real[0]]
  n, layout = len(row), prompts.layout
  keep = np.r_[0:n + layout.prefix_end + 1, n + layout.ends[5] + 1:n]
  _, hidden = model.apply({'params': params}, jnp.asarray(row[keep])[None])
  assert np.abs(np.asarray(hidden[3][0, -1]) - vectors[0, 6]).max() > 1e-3  # layer 3, as vectors
  assert np.abs(vectors[0, 1] - vectors[0, 2]).max() > 1e-3


def test_batched_vectors_equal_one_at_a_time(tokenizer, llm):
  """Pad keys masked and positions counted from the first real token: a caption's
  vectors do not depend on its batch (the release's do)."""
  model, params = llm
  for template in ('single', 'long'):
    prompts = facets.FacetPrompts(tokenizer, template, max_length=256)
    ids, real = prompts(CAPTIONS)
    batched = facets.facet_embeddings(model, params, jnp.asarray(ids), real, prompts.layout, 3)
    for i in (1, 2):
      one_ids, one_real = prompts([CAPTIONS[i]])
      one_ids = one_ids[:, one_real[0]]  # no padding at all, as the release's batch of one
      assert real[i].sum() == one_ids.shape[1] < ids.shape[1]
      alone = facets.facet_embeddings(model, params, jnp.asarray(one_ids),
                                      np.ones(one_ids.shape, bool), prompts.layout, 3)
      ref = np.asarray(alone[0])
      np.testing.assert_allclose(np.asarray(batched[i]), ref, atol=1e-5 * np.abs(ref).max())


def test_matches_the_released_mask_in_pytorch(tmp_path, tokenizer, llm):
  """The release's mask and layer hook on a transformers Llama (batch of one: no padding),
  against our decoupled pass on the same weights."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  from clipjax.convert import llama as convert_llama  # pylint: disable=g-import-not-at-top
  model, params = llm
  convert_llama.save_llama(str(tmp_path), model, params)
  hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path), attn_implementation='eager').eval()
  prompts = facets.FacetPrompts(tokenizer, 'long', max_length=256)
  for caption in CAPTIONS[:2]:
    ids, real = prompts([caption])
    ids = ids[:, real[0]]
    # multiprompteol_embeddings.py: quote = last token, its last 7 occurrences; the
    # separator = token -10 of the sentence below (the comma in Mistral's tokenization,
    # where 'word' and ':"' are two tokens; this tokenizer merges them: -9), its last
    # occurrence.
    x = torch.tensor(ids, dtype=torch.long)
    quote = x[0, -1]
    quotes = torch.where(x[0] == quote)[0][-7:]
    sep_ids = tokenizer(['After thinking step by step , this image description means in just one word:"'],
                        return_tensors='pt').input_ids
    assert tokenizer.convert_ids_to_tokens(int(sep_ids[0, -9])) == '▁,'
    sep = torch.where(x[0] == sep_ids[0, -9])[0][-1]
    length = x.shape[1]
    mask = torch.ones(1, length).unsqueeze(-1) * torch.tril(torch.ones(1, length, length))
    for i in range(7):
      if i == 0:
        mask[:, sep + 1:quotes[i] + 1, quotes[i] + 1:] = 0
      else:
        mask[:, quotes[i - 1] + 1:quotes[i] + 1, quotes[i] + 1:] = 0
        mask[:, quotes[i - 1] + 1:quotes[i] + 1, sep + 1:quotes[i - 1] + 1] = 0
    mask = mask.unsqueeze(1).expand(1, 4, length, length)
    mask = mask.masked_fill(mask == 0, torch.finfo(torch.float32).min).masked_fill(mask == 1, 0)
    with torch.no_grad():
      out = hf.model(input_ids=x, attention_mask=mask, output_hidden_states=True)
    ref = out.hidden_states[2][0, quotes].numpy()  # the output of decoder layer 2 (1-based)
    ours = np.asarray(facets.facet_embeddings(model, params, jnp.asarray(ids), np.ones_like(ids, bool),
                                              prompts.layout, 2))[0]
    np.testing.assert_allclose(ours, ref, atol=1e-5 * np.abs(ref).max())


def test_loss_equals_the_released_formula():
  """MultiPositiveSigmoidLoss: -1/(kB) sum log sigmoid(y (s x.t + b)) over [B, kB]
  logits with texts sample-major (rows k i .. k i + k - 1 are image i's), in float64."""
  rng = np.random.default_rng(0)
  b, k, d = 6, 3, 8
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  image, text = unit(rng.normal(size=(b, d))), unit(rng.normal(size=(b, k, d)))
  scale, bias = 7.0, -3.0

  def reference(image, text):
    t = text.reshape(b * k, d)
    z = scale * image @ t.T + bias
    y = np.where(np.arange(b * k)[None, :] // k == np.arange(b)[:, None], 1.0, -1.0)
    return -np.sum(np.log(1 / (1 + np.exp(-y * z)))) / (b * k)

  ours = flame.multi_positive_sigmoid_loss(jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32),
                                           scale, bias, implementation='xla')
  np.testing.assert_allclose(float(ours), reference(image, text), rtol=2e-6)
  grad = np.asarray(jax.grad(lambda x: flame.multi_positive_sigmoid_loss(
      x, jnp.asarray(text, jnp.float32), scale, bias, implementation='xla'))(jnp.asarray(image, jnp.float32)))
  eps, numeric = 1e-6, np.zeros_like(image)
  for i in range(b):
    for j in range(d):
      step = np.zeros_like(image)
      step[i, j] = eps
      numeric[i, j] = (reference(image + step, text) - reference(image - step, text)) / (2 * eps)
  np.testing.assert_allclose(grad, numeric, atol=1e-5 * np.abs(numeric).max())
  for implementation in ('chunked', 'pallas'):
    other = flame.multi_positive_sigmoid_loss(jnp.asarray(image, jnp.float32), jnp.asarray(text, jnp.float32),
                                              scale, bias, implementation=implementation)
    np.testing.assert_allclose(float(other), float(ours), rtol=1e-5)


@pytest.fixture(scope='module')
def tiny_llm_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp('llm')
  src = shapes.ShapesSource('train', 200, caption_style='long')
  captions = [src.caption(i) for i in range(200)]
  answers = [[o.shape for o in src.scene(i)[:1]] * 7 for i in range(200)]
  language_model.train_language_model(captions, str(folder), facet_data=[('long', captions, answers)],
                                      vocab_size=400, width=32, layers=2, heads=4, kv_heads=2,
                                      mlp_dim=64, length=64, steps=3, batch_size=4)
  return str(folder)


def _embed_config(llm_path, **data):
  c = load_config('configs/flame_quickstart.py:embed')
  c.llm.path = llm_path
  c.data.train_num_samples = 60
  c.embed.part_size = 25
  c.embed.batch_size = 8
  c.data.update(data)
  return c


def test_embedding_job_resumes_to_the_same_shards(tmp_path, tiny_llm_folder):
  config = _embed_config(tiny_llm_folder)
  whole = embed.embed_parts(config, tmp_path / 'whole')
  assert whole['parts'] == 3 and whole['samples'] == 60
  killed = embed.embed_parts(config, tmp_path / 'cut', max_parts=1)
  assert killed['parts'] == 1
  rest = embed.embed_parts(config, tmp_path / 'cut')
  assert rest['parts'] == 2 and embed.embed_parts(config, tmp_path / 'cut')['parts'] == 0
  for n in range(3):
    for suffix in (text_features.KEYS, text_features.VECTORS):
      a = np.load(tmp_path / 'whole' / f'{n:06d}{suffix}')
      b = np.load(tmp_path / 'cut' / f'{n:06d}{suffix}')
      assert a.dtype == b.dtype and np.array_equal(a, b)
  store = text_features.TextFeatures(str(tmp_path / 'whole'))
  assert len(store) == 60 and store.shape == (8, 32)
  vectors = store['59'].astype(np.float32)
  np.testing.assert_allclose(np.linalg.norm(vectors, axis=-1), 1.0, atol=2e-3)
  # Vector 0 is the single prompt's, 1-7 the long prompt's facets, as the encoder gives them.
  encoder = embed.FacetEncoder(tiny_llm_folder, max_length=192, max_caption_tokens=96)
  caption = shapes.ShapesSource('train', 60, caption_style='long').caption(59)
  direct = np.concatenate([encoder([caption], 'single'), encoder([caption], 'long')], axis=1)[0]
  direct /= np.linalg.norm(direct, axis=-1, keepdims=True)
  np.testing.assert_allclose(vectors, direct, atol=2e-3)
  other = _embed_config(tiny_llm_folder)
  other.llm.max_length = 160
  with pytest.raises(ValueError, match='another embedding job'):
    embed.embed_parts(other, tmp_path / 'whole')
  assert json.loads((tmp_path / 'whole' / 'job.json').read_text())['vectors_shape'] == [8, 32]


def test_flame_trains_against_the_stored_vectors(tmp_path, tiny_llm_folder):
  from clipjax.train import loop  # pylint: disable=g-import-not-at-top
  embed.embed_parts(_embed_config(tiny_llm_folder), tmp_path / 'text')
  c = load_config('configs/flame_quickstart.py')
  c.llm.path = tiny_llm_folder
  c.data.text_features = str(tmp_path / 'text')
  c.data.train_num_samples = 60
  c.batch_size, c.total_steps, c.log_every = 8, 12, 1
  c.eval_every, c.checkpoint_every = 12, 12
  c.evals.long_retrieval.num_samples = 16
  c.evals.shapes_colour.num_samples = 16
  trainer = loop.Trainer(c, str(tmp_path / 'run'))
  results = trainer.train()
  state = trainer.state
  rows = [json.loads(line) for line in (tmp_path / 'run' / 'metrics.jsonl').read_text().splitlines()]
  losses = [r['loss'] for r in rows if 'loss' in r]
  assert np.mean(losses[-3:]) < np.mean(losses[:3])
  assert 'long_retrieval/image_to_text_R@1' in results
  # After every step the log-scale is clamped to [0, ln 100].
  for value, clamped in ((-1.0, 0.0), (10.0, np.log(100.0)), (1.5, 1.5)):
    moved = state.replace(params=dict(state.params, log_logit_scale=jnp.asarray(value)))
    assert float(trainer.method.after_step(moved).params['log_logit_scale']) == pytest.approx(clamped)
  # A store written by another LLM, or from other data, is refused before training.
  c.llm.layer = 1
  with pytest.raises(ValueError, match='differs from the LLM'):
    flame.FLAME(c)
  c.llm.layer, c.data.seed = None, 3
  with pytest.raises(ValueError, match='other data'):
    flame.FLAME(c)


def test_two_processes_write_the_parts_of_one(tmp_path, tiny_llm_folder):
  config = _embed_config(tiny_llm_folder)
  embed.embed_parts(config, tmp_path / 'one')
  assert embed.embed_parts(config, tmp_path / 'two', 1, 2)['parts'] == 1  # part 1 of 0, 1, 2
  assert embed.embed_parts(config, tmp_path / 'two', 0, 2)['parts'] == 2
  for n in range(3):
    for suffix in (text_features.KEYS, text_features.VECTORS):
      assert np.array_equal(np.load(tmp_path / 'one' / f'{n:06d}{suffix}'),
                            np.load(tmp_path / 'two' / f'{n:06d}{suffix}'))


def _flame_config(tiny_llm_folder, store, **overrides):
  c = load_config('configs/flame_quickstart.py')
  c.llm.path, c.data.text_features = tiny_llm_folder, str(store)
  c.data.train_num_samples = 60
  c.batch_size, c.log_every, c.eval_every, c.loss_implementation = 8, 1, 0, 'xla'
  c.evals = {}
  c.update_from_flattened_dict(overrides)
  return c


def test_accumulation_and_resume_are_exact(tmp_path, tiny_llm_folder):
  """Gradient accumulation keeps every negative (the loss is over the global batch), and a
  run stopped and resumed equals the uninterrupted one bit for bit (the positives drawn
  per read are a function of the stream position)."""
  from clipjax.train import loop  # pylint: disable=g-import-not-at-top
  embed.embed_parts(_embed_config(tiny_llm_folder), tmp_path / 'text')
  runs = {}
  for name, overrides in (('full', {}), ('accum', dict(grad_accum_steps=4))):
    trainer = loop.Trainer(_flame_config(tiny_llm_folder, tmp_path / 'text', total_steps=3,
                                         checkpoint_every=3, **overrides), tmp_path / name)
    trainer.train()
    runs[name] = trainer.state
  for a, b in zip(jax.tree_util.tree_leaves(runs['full'].params),
                  jax.tree_util.tree_leaves(runs['accum'].params)):
    np.testing.assert_allclose(a, b, atol=2e-5)
  run = lambda name, **kw: loop.Trainer(_flame_config(
      tiny_llm_folder, tmp_path / 'text', total_steps=6, checkpoint_every=6, **kw), tmp_path / name)
  whole = run('whole')
  whole.train()
  run('split', stop_at_step=4).train()
  rest = run('split')
  rest.train()
  for a, b in zip(jax.tree_util.tree_leaves(whole.state.params),
                  jax.tree_util.tree_leaves(rest.state.params)):
    np.testing.assert_array_equal(a, b)


SHARDED = r'''
import json, jax, numpy as np, tempfile
from tests.test_flame import _flame_config
from tests.test_train import run_steps
from clipjax.train.loop import Trainer
out = {}
for name, mesh, extra in [('one', dict(data=1, fsdp=1, tensor=1), {}),
                          ('d2f2t2', dict(data=2, fsdp=2, tensor=2), {}),
                          ('d2f2t2+chunked', dict(data=2, fsdp=2, tensor=2),
                           dict(loss_implementation='chunked'))]:
  c = _flame_config(LLM, STORE, total_steps=2, mesh=mesh, **extra)
  t = Trainer(c, tempfile.mkdtemp(), devices=jax.devices()[:1] if name == 'one' else None)
  state, losses = run_steps(t, 2)
  out[name] = dict(losses=losses, params=[np.asarray(x).ravel()[:50].tolist()
                                          for x in jax.tree_util.tree_leaves(state.params)])
print(json.dumps(out))
'''


@pytest.mark.slow
def test_sharded_steps_equal_single_device(tmp_path, tiny_llm_folder, python_subprocess):
  """FLAME on a data x fsdp x tensor mesh (and the chunked sigmoid kernel sharded over it)
  takes the one-device steps: losses to 1e-6, parameters to 5e-7."""
  embed.embed_parts(_embed_config(tiny_llm_folder), tmp_path / 'text')
  code = SHARDED.replace('LLM', repr(tiny_llm_folder)).replace('STORE', repr(str(tmp_path / 'text')))
  out = json.loads(python_subprocess(code, devices=8).strip().splitlines()[-1])
  ref = out.pop('one')
  for name, got in out.items():
    np.testing.assert_allclose(got['losses'], ref['losses'], rtol=1e-6, err_msg=name)
    for a, b in zip(got['params'], ref['params']):
      np.testing.assert_allclose(a, b, rtol=0, atol=5e-7, err_msg=name)


def test_tar_shards_join_by_their_keys(tmp_path, tiny_llm_folder):
  """Shard records are keyed by `__key__`: one part per shard, a record that cannot be
  read is skipped, and training's transform finds each readable record's vectors."""
  import io  # pylint: disable=import-outside-toplevel
  from PIL import Image  # pylint: disable=import-outside-toplevel
  from clipjax.data import pipeline, sources, transforms  # pylint: disable=import-outside-toplevel
  png = io.BytesIO()
  Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(png, format='PNG')
  writer = sources.ShardWriter(str(tmp_path / 'shards'), shard_size=3)
  for i, caption in enumerate(CAPTIONS[:5] + ['']):
    writer.write(f'sample{i:03d}', {'png': png.getvalue(), 'txt': caption})
  writer.close()
  config = _embed_config(tiny_llm_folder, format='wds', train=writer.pattern())
  stats = embed.embed_parts(config, tmp_path / 'text')
  assert (stats['parts'], stats['samples'], stats['skipped']) == (2, 5, 1)
  store = text_features.TextFeatures(str(tmp_path / 'text'))
  encoder = embed.FacetEncoder(tiny_llm_folder, max_length=256, max_caption_tokens=96)
  images = transforms.ImageText(None, 0, 32)
  targets = flame.FacetTargets(images, store, positives=8)
  source = pipeline.make_source(config.data)
  records = [source.decoder(raw) for url in source.shards for raw in sources.iter_tar_samples(url)]
  assert [r.get('key') for r in records[:5]] == [f'sample{i:03d}' for i in range(5)]
  for record in records[:5]:
    direct = np.concatenate([encoder([record['caption']], 'single'),
                             encoder([record['caption']], 'long')], axis=1)[0]
    direct /= np.linalg.norm(direct, axis=-1, keepdims=True)
    np.testing.assert_allclose(store[record['key']].astype(np.float32), direct, atol=2e-3)
    row = targets(record, np.random.default_rng(0))
    assert row['text_emb'].shape == (8, 32)
    # All 8 drawn without replacement: the same vectors, permuted.
    assert sorted(map(tuple, row['text_emb'].round(3))) == sorted(
        map(tuple, store[record['key']].astype(np.float32).round(3)))
  with pytest.raises(sources.BadSample, match='missing_text_features'):
    targets({'image': records[0]['image'], 'key': 'never-embedded'}, np.random.default_rng(0))


@pytest.mark.slow
def test_two_launched_processes_embed_as_one(tmp_path, tiny_llm_folder):
  """`CLIPJAX_MODULE=clipjax.embed launch/local_multiprocess.sh 2 -- ...`: the processes
  join, split the parts, and write what one process writes (bit for bit on one device
  each, as here; over more devices per process the batch is split over them, and the
  float16 vectors may differ in their last bit)."""
  import os  # pylint: disable=import-outside-toplevel
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from pathlib import Path  # pylint: disable=import-outside-toplevel
  root = Path(__file__).resolve().parents[1]
  embed.embed_parts(_embed_config(tiny_llm_folder), tmp_path / 'one')
  args = ['--config', 'configs/flame_quickstart.py:embed', '--workdir', str(tmp_path / 'two'),
          f'--config.llm.path={tiny_llm_folder}', '--config.data.train_num_samples=60',
          '--config.embed.part_size=25', '--config.embed.batch_size=8']
  proc = subprocess.run([str(root / 'launch' / 'local_multiprocess.sh'), '2', '--', *args],
                        cwd=root, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, PYTHON=sys.executable, CLIPJAX_MODULE='clipjax.embed',
                                 DEVICES_PER_PROCESS='1'))
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert 'embedded 35 samples in 2 parts' in proc.stdout  # process 0: parts 0 and 2
  assert 'embedded 25 samples in 1 parts' in proc.stdout  # process 1: part 1
  for n in range(3):
    for suffix in (text_features.KEYS, text_features.VECTORS):
      assert np.array_equal(np.load(tmp_path / 'one' / f'{n:06d}{suffix}'),
                            np.load(tmp_path / 'two' / f'{n:06d}{suffix}'))


# The README's study table (`python -m clipjax.analysis.flame_study --config
# configs/flame_quickstart.py:study --workdir DIR`, seeds 0/1/2, 2026-11-30).
PUBLISHED_STUDY = {
    ('flame', 'long_retrieval/image_to_text_R@1'): (0.300, 0.346, 0.344),
    ('flame', 'long_retrieval/text_to_image_R@1'): (0.560, 0.606, 0.578),
    ('flame', 'long_retrieval/image_to_text_R@5'): (0.712, 0.728, 0.736),
    ('flame', 'long_retrieval/text_to_image_R@5'): (0.892, 0.914, 0.902),
    ('flame', 'shapes_colour/zeroshot_top1'): (0.250, 0.304, 0.306),
    ('clip', 'long_retrieval/image_to_text_R@1'): (0.278, 0.312, 0.330),
    ('clip', 'long_retrieval/text_to_image_R@1'): (0.258, 0.280, 0.300),
    ('clip', 'long_retrieval/image_to_text_R@5'): (0.642, 0.644, 0.662),
    ('clip', 'long_retrieval/text_to_image_R@5'): (0.620, 0.622, 0.644),
    ('clip', 'shapes_colour/zeroshot_top1'): (1.000, 0.986, 0.994),
}


@pytest.mark.slow(minutes=14)
def test_the_published_study(tmp_path):
  """Seed 0 of the study (the tiny LLM, the embedding job, FLAME and CLIP for 1,500
  steps): each figure within the three seeds' range widened by half of it, and the README's
  finding: FLAME retrieves long captions ahead of CLIP, by 20 points or more text->image."""
  from clipjax.analysis import flame_study  # pylint: disable=import-outside-toplevel
  from conftest import assert_within_seeds  # pylint: disable=import-outside-toplevel
  study = load_config('configs/flame_quickstart.py:study')
  study.seeds = (0,)
  rows = flame_study.run_study(study, tmp_path)
  print(rows)
  got = {(r['method'], m): r[m] for r in rows for m in flame_study.METRICS}
  assert_within_seeds(got, PUBLISHED_STUDY)
  i2t, t2i = 'long_retrieval/image_to_text_R@1', 'long_retrieval/text_to_image_R@1'
  assert got['flame', t2i] >= got['clip', t2i] + 0.2
  assert got['flame', i2t] > got['clip', i2t]
