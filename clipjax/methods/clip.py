"""CLIP (Radford et al. 2021): symmetric InfoNCE over the global batch."""
from clipjax import losses
from clipjax.methods.base import Method


class CLIP(Method):

  def loss_from_embeddings(self, variables, aux, emb, batch):
    del aux, batch
    scale = self.scale_and_bias(variables['params'])['logit_scale']
    loss = losses.clip_loss(emb['image_emb'], emb['text_emb'], scale, **self.loss_kwargs())
    return loss, {'logit_scale': scale}


METHOD = CLIP
